"""Training loop: sampler, schedule, configs, checkpoints, exact resume, and "it learns"."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import synthetic_set
from gaussmem.checkpoint import load_checkpoint
from gaussmem.config import BudgetConfig, to_dict
from gaussmem.errors import CheckpointError, ConfigError, RunDirectoryError
from gaussmem.evaluate import evaluate_checkpoint
from gaussmem.metrics_log import read_metrics
from gaussmem.presets import preset, resolve
from gaussmem.train import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    TrainingClassSampler,
    TrainingError,
    build_trainer,
    learning_rate,
    train,
    train_step,
)


def test_sampler_is_seeded_and_resumable() -> None:
    dataset = synthetic_set()
    first = TrainingClassSampler(dataset, 4, 2, 3, seed=5)
    batches = [first.next_batch() for _ in range(2)]
    state = first.state_dict()
    rest = [first.next_batch() for _ in range(4)]
    again = TrainingClassSampler(dataset, 4, 2, 3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(batches, [again.next_batch()
                                                               for _ in range(2)], strict=True))
    resumed = TrainingClassSampler(dataset, 4, 2, 3, seed=99)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert all(np.array_equal(a, resumed.next_batch()) for a in rest)
    assert batches[0].shape == (2, 4, 28, 28)


def test_sampler_pairs_drawings_of_one_class() -> None:
    dataset = synthetic_set()
    sampler = TrainingClassSampler(dataset, 5, 2, 1, seed=0)
    batch = sampler.next_batch()
    classes = sampler.classes
    for column, class_index in enumerate(classes):
        drawings = {d.tobytes() for d in dataset.images[class_index]}
        assert batch[0, column].tobytes() in drawings and batch[1, column].tobytes() in drawings
        assert not np.array_equal(batch[0, column], batch[1, column])
    with pytest.raises(TrainingError, match="classes per step"):
        TrainingClassSampler(dataset, 50, 2, 1, seed=0)


def test_sampler_never_requeries_an_image_of_the_episode() -> None:
    """The support written before the first step and every step's drawings are distinct
    within an episode: no query is an image already stored in the memory."""
    dataset = synthetic_set()
    sampler = TrainingClassSampler(dataset, 4, 2, 3, seed=1, support=1)
    for _ in range(2):  # two episodes
        seen: list[set[bytes]] = [set() for _ in range(4)]
        for step in range(3):
            batch = sampler.next_batch()
            if step == 0:
                for column, drawing in enumerate(sampler.episode_support()[0]):
                    seen[column].add(drawing.tobytes())
            for column in range(4):
                for drawing in batch[:, column]:
                    assert drawing.tobytes() not in seen[column]
                    seen[column].add(drawing.tobytes())
        assert all(len(drawings) == 7 for drawings in seen)
    with pytest.raises(TrainingError, match=r"20 support \+ 3 steps x 2"):
        TrainingClassSampler(dataset, 4, 2, 3, seed=0, support=20)


def test_learning_rate_cosine_over_steps_and_time() -> None:
    config = preset("smoke")
    config.budget.max_steps = 100
    assert learning_rate(config, 0, 0.0) == pytest.approx(config.optim.lr)
    end = config.optim.lr * config.optim.final_lr_fraction
    assert learning_rate(config, 100, 0.0) == pytest.approx(end)
    config.budget.max_minutes = 1.0
    assert learning_rate(config, 0, 60.0) == pytest.approx(end)


def test_learning_rate_warmup_ramps_linearly_then_follows_the_schedule() -> None:
    config = preset("smoke")
    config.budget = BudgetConfig(max_steps=100)
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 4
    lr = config.optim.lr
    assert [learning_rate(config, step, 0.0) for step in range(6)] == pytest.approx(
        [lr / 4, lr / 2, 3 * lr / 4, lr, lr, lr])
    config.optim.schedule = "cosine"
    assert learning_rate(config, 1, 0.0) < learning_rate(config, 3, 0.0)
    assert learning_rate(config, 50, 0.0) == pytest.approx(lr * (0.02 + 0.98 * 0.5))
    with pytest.raises(ConfigError, match="warmup_steps"):
        resolve("smoke", overrides=["optim.warmup_steps=-1"])


def test_config_presets_overrides_and_errors(tmp_path: Path) -> None:
    for name in ("omniglot-5way", "omniglot-20way", "omniglot-5way-to-20way",
                 "omniglot-parallel", "cpu-quick"):
        assert preset(name).method == "mavae"
    assert preset("omniglot-parallel").episodes.batch_episodes == 20
    assert preset("omniglot-5way-to-20way").eval_n_way == 20
    # The paper's Omniglot presets train cpu-quick's validated model and optimizer;
    # LFW-a's paper preset trains lfw-cpu's, chosen on LFW-a's validation people: the
    # memory softmax in the triplet's place, c1 scaled by the faces' area.
    quick = preset("cpu-quick")
    for name in ("omniglot-5way", "omniglot-20way", "omniglot-parallel-20way"):
        config = preset(name)
        assert (config.model, config.optim, config.loss, config.precision) == (
            quick.model, quick.optim, quick.loss, quick.precision), name
    faces, paper_faces = preset("lfw-cpu"), preset("lfw-5way")
    assert (paper_faces.model, paper_faces.optim, paper_faces.loss, paper_faces.precision) == (
        faces.model, faces.optim, faces.loss, faces.precision)
    assert faces.loss.memory_term == "softmax" and quick.loss.memory_term == "triplet"
    # Both decoders read z_c's mean, with Omniglot's c1 scaled by the faces' area; on
    # faces z_c's KL weighs three times that scaling, and z_s is dear.
    assert (quick.model.content_to_decoder, faces.model.content_to_decoder) == ("mean",
                                                                                "mean")
    assert quick.loss.triplet == 1000 and faces.loss.triplet == 9 * 1000
    assert quick.loss.latent == 1 and faces.loss.latent == 27
    assert quick.loss.latent_style == 4 and faces.loss.latent_style == 2048
    assert (paper_faces.episodes.n_way, paper_faces.episodes.batch_episodes) == (5, 16)
    toml = tmp_path / "run.toml"
    toml.write_text("seed = 7\n[optim]\nlr = 0.002\n")
    config = resolve("smoke", toml, ["optim.lr=3e-4", "budget.max_minutes=none",
                                     "channels_last=false"])
    assert (config.seed, config.optim.lr, config.channels_last) == (7, 3e-4, False)
    assert config.budget.max_minutes is None
    with pytest.raises(ConfigError, match="unknown field"):
        resolve("smoke", overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("omniglot-6way")
    with pytest.raises(ConfigError, match="never use the test split"):
        resolve("smoke", overrides=["data.val_subset=test"])
    with pytest.raises(ConfigError, match="similarity.kind"):
        resolve("smoke", overrides=["similarity.kind=cosine"])
    with pytest.raises(ConfigError, match="loss.memory_term must be one of"):
        resolve("smoke", overrides=["loss.memory_term=nca"])
    with pytest.raises(ConfigError, match="loss.cross_style must be one of"):
        resolve("smoke", overrides=["loss.cross_style=prior"])
    assert resolve("smoke", overrides=["loss.cross_style=other_class"]
                   ).loss.cross_style == "other_class"
    with pytest.raises(ConfigError, match="loss.consistency_trains must be one of"):
        resolve("smoke", overrides=["loss.consistency_trains=encoder"])
    with pytest.raises(ConfigError, match="not implemented for method 'protonet'"):
        resolve("protonet-cpu", overrides=["loss.memory_term=softmax"])


def test_training_writes_config_metrics_and_checkpoints(tmp_path: Path) -> None:
    dataset = synthetic_set()
    result = train(preset("smoke"), tmp_path / "run", dataset, dataset, progress=False)
    assert result.step == 6
    run = tmp_path / "run"
    saved_config = json.loads((run / "config.json").read_text())
    assert saved_config == to_dict(preset("smoke"))
    checkpoint = load_checkpoint(run / LAST_CHECKPOINT)
    assert {"model", "optimizer", "memory", "config", "step", "rng", "sampler"} <= set(checkpoint)
    assert checkpoint["step"] == 6 and (run / BEST_CHECKPOINT).exists()
    records = read_metrics(run / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert {"triplet", "triplet_grad_norm", "positive_rate", "images_per_second"} <= set(
        train_records[-1])
    assert any(r["kind"] == "val" for r in records)
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        train(preset("smoke"), run, dataset, dataset, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(run / "missing.ckpt")


@pytest.mark.parametrize("overrides", [
    [], ["augment.max_rotation_degrees=10", "augment.max_scale=0.1", "augment.max_shift=0.1"],
    ["optim.ema_decay=0.9"]],
    ids=["plain", "augmented", "weight-average"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path: Path, overrides: list[str]
                                                          ) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=[*overrides, "budget.max_steps=8"])
    train(config, tmp_path / "straight", dataset, dataset, progress=False)
    train(config, tmp_path / "resumed", dataset, dataset, progress=False, stop_at_step=5)
    assert load_checkpoint(tmp_path / "resumed" / LAST_CHECKPOINT)["step"] == 5
    result = train(config, tmp_path / "resumed", dataset, dataset, progress=False, resume=True)
    assert result.step == 8
    straight = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)
    resumed = load_checkpoint(tmp_path / "resumed" / LAST_CHECKPOINT)
    for entry in ("model", "trained_model"):
        for key, value in (straight[entry] or {}).items():
            assert torch.equal(value, resumed[entry][key]), (entry, key)
    for key, value in straight["memory"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, resumed["memory"][key]), key
    reports = [evaluate_checkpoint(tmp_path / run / LAST_CHECKPOINT, n_way=3, n_shot=2,
                                   n_query=3, episodes=5, seed=1, dataset=dataset)["result"]
               for run in ("straight", "resumed")]
    reports[0].pop("seconds")
    reports[1].pop("seconds")
    assert reports[0] == reports[1]


def test_weight_average_is_what_validation_and_checkpoints_use(tmp_path: Path) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=["optim.ema_decay=0.5"])
    trainer = build_trainer(config, tmp_path, dataset, dataset)
    method = trainer.method
    weights = []
    for _ in range(3):
        train_step(trainer)
        weights.append({k: v.clone() for k, v in method.model.state_dict().items()})
    # EMA with decay 0.5: the first step's weights, then halfway to each new step's
    # (BatchNorm statistics are the average's own: the next test).
    expected = {k: 0.25 * weights[0][k] + 0.25 * weights[1][k] + 0.5 * weights[2][k]
                for k, _ in method.model.named_parameters()}
    averaged = method.evaluated_model.state_dict()
    assert method.evaluated_model is not method.model
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, msg=key)
    assert not torch.equal(averaged["backbone.blocks.0.0.weight"],
                           weights[-1]["backbone.blocks.0.0.weight"])
    assert method.classifier().vae is method.evaluated_model
    checkpoint = method.state_dict()
    torch.testing.assert_close(checkpoint["model"]["backbone.blocks.0.0.weight"],
                               expected["backbone.blocks.0.0.weight"])
    torch.testing.assert_close(checkpoint["trained_model"]["backbone.blocks.0.0.weight"],
                               weights[-1]["backbone.blocks.0.0.weight"])
    assert build_trainer(preset("smoke"), tmp_path, dataset, dataset
                         ).method.state_dict()["trained_model"] is None


def test_weight_average_has_batch_norm_statistics_of_its_own_weights(tmp_path: Path
                                                                       ) -> None:
    dataset = synthetic_set()
    trainer = build_trainer(resolve("smoke", overrides=["optim.ema_decay=0.5"]), tmp_path,
                            dataset, dataset)
    method = trainer.method
    for _ in range(3):
        train_step(trainer)
    generator_state = torch.get_rng_state()
    network = method.evaluated_model
    assert torch.equal(torch.get_rng_state(), generator_state)
    # The statistics are those of the average's activations on the statistics images.
    images = method._statistics_images()
    first_norm = network.backbone.blocks[0][1]
    activations = network.backbone.blocks[0][0](images)
    torch.testing.assert_close(first_norm.running_mean, activations.mean((0, 2, 3)))
    torch.testing.assert_close(first_norm.running_var,
                               activations.var((0, 2, 3)), rtol=1e-3, atol=1e-5)
    assert network.training and method.model.training


def test_weight_average_needs_a_checkpoint_that_holds_one(tmp_path: Path) -> None:
    dataset = synthetic_set()
    plain = build_trainer(preset("smoke"), tmp_path, dataset, dataset).method.state_dict()
    averaging = build_trainer(resolve("smoke", overrides=["optim.ema_decay=0.9"]), tmp_path,
                              dataset, dataset)
    with pytest.raises(TrainingError, match="without optim.ema_decay"):
        averaging.method.load_state_dict(plain)
    for bad in ("1", "-0.1"):
        with pytest.raises(ConfigError, match="optim.ema_decay"):
            resolve("smoke", overrides=[f"optim.ema_decay={bad}"])


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("memory_term", ["triplet", "softmax"])
def test_tiny_model_learns_on_real_omniglot(real_data_dir: Path, real_cache_dir: Path,
                                            tmp_path: Path, memory_term: str) -> None:
    """A few dozen steps: the triplet has a gradient and 5-way 1-shot beats chance, with
    the paper's triplet or the memory softmax in its place."""
    from gaussmem.data.omniglot import load_omniglot

    train_set = load_omniglot("vinyals", "train", data_dir=real_data_dir,
                              cache_dir=real_cache_dir)
    val_set = load_omniglot("vinyals", "val", data_dir=real_data_dir, cache_dir=real_cache_dir)
    config = resolve("smoke", overrides=[
        "episodes.n_way=8", "episodes.batch_episodes=4", "episodes.steps_per_episode=5",
        "model.hidden_channels=32", "model.content_dim=16", "budget.max_steps=40",
        "validation.every_steps=40", "validation.n_way=5", "validation.n_query=5",
        "validation.episodes=100", "log_every=10", f"loss.memory_term={memory_term}"])
    result = train(config, tmp_path / "run", train_set, val_set, progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    assert all(r["triplet_grad_norm"] > 0 for r in train_records)
    assert ("memory_softmax" in train_records[-1]) == (memory_term == "softmax")
    assert train_records[-1]["positive_rate"] > 0.5
    # Chance is 20%; a margin of 20 points is far outside the CI of 100 episodes.
    assert result.best_val_accuracy > 40.0


def _scripted_evaluation(monkeypatch: pytest.MonkeyPatch, accuracies: dict[int, list[float]]
                         ) -> list[int]:
    """Replace the loop's validation evaluator: the accuracy of an n_way-way task is the
    next value of `accuracies[n_way]`. Returns the list of n_way asked for, in order."""
    import gaussmem.train as train_module

    calls: list[int] = []

    def fake(classifier, dataset, *, n_way, **_):
        calls.append(n_way)
        mean = accuracies[n_way][sum(1 for n in calls if n == n_way) - 1]
        return SimpleNamespace(accuracy=SimpleNamespace(mean=mean, ci95=0.1), seconds=0.0)

    monkeypatch.setattr(train_module, "evaluate_support_query", fake)
    return calls


def test_best_checkpoint_follows_selection_task_and_time_to_97_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # smoke validates at steps 3 and 6: selection is 3-way, the timed task 2-way.
    calls = _scripted_evaluation(monkeypatch, {3: [50.0, 60.0], 2: [98.0, 10.0]})
    config = resolve("smoke", overrides=["validation.time_to_97_n_way=2"])
    dataset = synthetic_set()
    result = train(config, tmp_path / "run", dataset, dataset, progress=False)
    assert calls == [3, 2, 3, 2]
    assert (result.best_step, result.best_val_accuracy) == (6, 60.0)
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["time_to_97_accuracy"] for r in val] == [98.0, 10.0]
    assert result.minutes_to_97 == pytest.approx(val[0]["minutes"])


def test_one_evaluation_when_the_selection_task_is_the_timed_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _scripted_evaluation(monkeypatch, {3: [97.5, 60.0]})
    config = preset("smoke")
    assert config.validation.times_selection_task
    dataset = synthetic_set()
    result = train(config, tmp_path / "run", dataset, dataset, progress=False)
    assert calls == [3, 3]
    assert (result.best_step, result.best_val_accuracy) == (3, 97.5)
    assert result.minutes_to_97 is not None


def test_resume_replaces_only_the_machine_settings_given_on_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gaussmem train --resume` on another machine (or share of this one) takes the
    device, cuda_graph, threads and budget it is given and keeps everything else saved:
    in particular its own budget where none is given, not the default preset's."""
    from gaussmem.cli import build_parser
    from gaussmem.commands.train import _resume_config, _saved_config

    run = tmp_path / "run"
    config = resolve("smoke", overrides=["budget.max_steps=5", "num_threads=1"])
    threads_before = torch.get_num_threads()
    try:
        train(config, run, synthetic_set(), None, progress=False)
    finally:  # train() sets the process's threads; the other tests keep theirs
        torch.set_num_threads(threads_before)

    def resumed(*argv: str) -> object:
        args = build_parser().parse_args(["train", "--run-dir", str(run), "--resume", *argv])
        return _resume_config(_saved_config(run), args)

    assert resumed() is None  # the checkpoint's own config, budget included
    threads = resumed("--set", "num_threads=2")
    assert threads.num_threads == 2 and threads.budget.max_steps == 5
    assert threads.episodes.n_way == config.episodes.n_way  # not cpu-quick's
    assert resumed("--max-steps", "7").num_threads == 1
    longer = resumed("--max-steps", "9", "--set", "device=cpu", "--set", "num_threads=2")
    assert longer.budget.max_steps == 9 and longer.device == "cpu"
    capsys.readouterr()
    ignored = resumed("--set", "optim.lr=0.5", "--set", "num_threads=2")
    assert ignored.optim.lr == config.optim.lr
    assert "only the budget, device, cuda_graph and num_threads" in capsys.readouterr().out
    # train() takes them from the given config: the run goes on to the new budget.
    try:
        result = train(longer, run, synthetic_set(), None, progress=False, resume=True)
    finally:
        torch.set_num_threads(threads_before)
    assert result.step == 9
    saved = json.loads((run / "config.json").read_text())
    assert saved["budget"]["max_steps"] == 9 and saved["num_threads"] == 2


def test_a_run_killed_past_its_checkpoint_resumes_without_logging_steps_twice(
        tmp_path: Path) -> None:
    """A killed run has logged steps after its last checkpoint; the resumed run logs
    them again, so metrics.jsonl must hold each once, as an uninterrupted run's does."""
    dataset = synthetic_set()
    config = resolve("smoke", overrides=["budget.max_steps=8", "log_every=1"])
    train(config, tmp_path / "straight", dataset, dataset, progress=False)
    run = tmp_path / "killed"
    train(config, run, dataset, dataset, progress=False, stop_at_step=5)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        metrics.write(json.dumps({"kind": "train", "step": 6, "loss": 99.0}) + "\n")
    train(config, run, dataset, dataset, progress=False, resume=True)

    def steps(name: str) -> list[tuple[str, int]]:
        return [(r["kind"], r["step"]) for r in read_metrics(tmp_path / name / "metrics.jsonl")]

    assert steps("killed") == steps("straight")
    assert all(r.get("loss") != 99.0 for r in read_metrics(run / "metrics.jsonl"))
