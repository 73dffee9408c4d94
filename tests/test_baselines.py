"""Baselines (issue #5): ProtoNet, Matching Nets, Kaiser's memory behind the interface.

Oracle checks of each classifier's scores against brute force, the point-key memory's
update policy, overfitting one episode, training/resume through the generic loop, and a
loss that goes down on real Omniglot (`data`, `slow`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_set
from gaussmem.checkpoint import load_checkpoint
from gaussmem.commands.train import write_figures
from gaussmem.data.training_sampler import StreamSampler
from gaussmem.evaluate import evaluate_checkpoint, evaluate_online, evaluate_support_query
from gaussmem.methods import available_methods, method_class, training_class
from gaussmem.methods.kaiser import KaiserMemoryClassifier, KeyMemory, memory_loss
from gaussmem.methods.matching import MatchingNetwork, MatchingNetworkClassifier, matching_loss
from gaussmem.methods.protonet import PrototypicalNetwork, prototypical_loss
from gaussmem.metrics_log import read_metrics
from gaussmem.models.encoders import Conv4Backbone
from gaussmem.presets import preset, resolve
from gaussmem.train import LAST_CHECKPOINT, build_trainer, train, train_step

BASELINES = ("protonet", "matching", "kaiser")


class Linear(torch.nn.Module):
    """A tiny deterministic encoder for oracle tests: `(n, 1, 28, 28)` -> `(n, 6)`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(28 * 28, 6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layer(images.flatten(1))


def classifiers() -> dict[str, torch.nn.Module]:
    from gaussmem.config import MatchingConfig

    network = MatchingNetwork(MatchingConfig(hidden_channels=8))
    return {"protonet": PrototypicalNetwork(Linear(), channels_last=False),
            "matching": MatchingNetworkClassifier(network, channels_last=False),
            "kaiser": KaiserMemoryClassifier(Linear(), 6, channels_last=False)}


def test_every_method_is_registered_for_training_and_evaluation() -> None:
    assert set(available_methods()) == {"mavae", *BASELINES}
    for name in available_methods():
        assert method_class(name).method_name == name
        assert training_class(name) is not None


@pytest.mark.parametrize("name", BASELINES)
def test_scores_shape_and_unseen_labels(name: str) -> None:
    classifier = classifiers()[name].eval()
    support = torch.rand(2, 1, 28, 28)
    classifier.fit(support, torch.tensor([0, 2]))
    scores = classifier.predict_scores(torch.rand(5, 1, 28, 28))
    assert scores.shape == (5, 3)
    assert torch.isinf(scores[:, 1]).all() and torch.isfinite(scores[:, [0, 2]]).all()
    # A support image is its own nearest: predicted as its label.
    assert classifier.predict(support).tolist() == [0, 2]
    classifier.reset()
    assert torch.isinf(classifier.predict_scores(torch.rand(2, 1, 28, 28))).all()


def test_protonet_scores_are_negative_squared_distance_to_class_means() -> None:
    classifier = classifiers()["protonet"].eval()
    support, labels = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 1, 2, 2, 2])
    queries = torch.rand(4, 1, 28, 28)
    classifier.fit(support[:3], labels[:3])
    classifier.add_support(support[3:], labels[3:])  # incremental = all at once
    with torch.no_grad():
        embedded, query_embedded = classifier.encoder(support), classifier.encoder(queries)
    means = torch.stack([embedded[labels == c].mean(0) for c in range(3)])
    expected = -((query_embedded[:, None] - means[None]) ** 2).sum(-1)
    torch.testing.assert_close(classifier.predict_scores(queries), expected, atol=1e-4,
                               rtol=1e-4)


def test_matching_scores_are_log_attention_mass_per_label() -> None:
    classifier = classifiers()["matching"].eval()
    support, labels = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 1, 0, 1])
    queries = torch.rand(3, 1, 28, 28)
    classifier.fit(support, labels)
    with torch.no_grad():
        s, q = classifier.network(support), classifier.network(queries)
    attention = torch.softmax(F.cosine_similarity(q[:, None], s[None], dim=-1), dim=1)
    expected = torch.stack([attention[:, labels == c].sum(1) for c in range(2)], 1).log()
    torch.testing.assert_close(classifier.predict_scores(queries), expected, atol=1e-5,
                               rtol=1e-5)


def test_matching_fce_shapes_and_gradients() -> None:
    from gaussmem.config import MatchingConfig

    network = MatchingNetwork(MatchingConfig(hidden_channels=8, fce=True, fce_steps=3))
    embeddings = network(torch.rand(3 * 4, 1, 28, 28))  # 3 drawings x 4 classes
    support, queries = network.contextualize(embeddings[:4], embeddings[4:])
    assert support.shape == (4, 8) and queries.shape == (8, 8)
    terms = matching_loss(network, embeddings, n_way=4, n_shot=1, cosine_scale=1.0)
    terms["loss"].backward()
    assert network.query_lstm.weight_ih.grad.abs().sum() > 0
    assert network.support_lstm.weight_hh_l0.grad.abs().sum() > 0


def test_kaiser_scores_are_best_cosine_per_label() -> None:
    classifier = classifiers()["kaiser"].eval()
    support, labels = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    queries = torch.rand(4, 1, 28, 28)
    classifier.fit(support, labels)
    assert len(classifier.memory) == 6  # a fresh memory: every support item is a key
    with torch.no_grad():
        s = F.normalize(classifier.encoder(support), dim=1)
        q = F.normalize(classifier.encoder(queries), dim=1)
    cosine = q @ s.T
    expected = torch.stack([cosine[:, labels == c].amax(1) for c in range(3)], 1)
    torch.testing.assert_close(classifier.predict_scores(queries), expected)


def test_key_memory_merges_into_a_right_neighbour_else_writes_the_oldest() -> None:
    memory = KeyMemory(3, 2)
    east, north, west = torch.tensor([[1.0, 0]]), torch.tensor([[0, 1.0]]), torch.tensor(
        [[-1.0, 0]])
    memory.update_(torch.cat([east, north]), torch.tensor([0, 1]))
    # Near east with east's label: merged into slot 0, normalised.
    slots = memory.update_(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))
    assert slots.tolist() == [0] and memory.counts.tolist() == [2, 1, 0]
    torch.testing.assert_close(memory.keys[0], F.normalize(torch.tensor([1.0 + 0.5 ** 0.5,
                                                                         0.5 ** 0.5]), dim=0))
    # Wrong label at the nearest key: a new entry, in the empty slot first ...
    assert memory.update_(east, torch.tensor([5])).tolist() == [2]
    # ... then the oldest (slot 1, north, not touched for 3 updates).
    assert memory.update_(west, torch.tensor([7])).tolist() == [1]
    assert memory.labels.tolist() == [0, 7, 5]
    assert not any(p.requires_grad for p in memory.buffers())


def test_kaiser_loss_uses_nearest_positive_and_negative_with_margin() -> None:
    memory = KeyMemory(4, 2)
    keys = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    memory.update_(keys, torch.tensor([0, 1, 0]))
    query = F.normalize(torch.tensor([[0.8, 0.6]]), dim=1).requires_grad_()
    terms = memory_loss(query, torch.tensor([0]), memory, choose_k=3, alpha=0.1)
    # positive: key 0 (cos 0.8); negative: key 1 (cos 0.96).
    assert terms["loss"].item() == pytest.approx(max(0.96 - 0.8 + 0.1, 0) - 0.1, abs=1e-6)
    assert terms["accuracy"].item() == 0.0 and terms["positive_rate"].item() == 1.0
    terms["loss"].backward()
    assert query.grad.abs().sum() > 0
    # No key with the label anywhere: positive similarity 0.
    alone = memory_loss(query.detach(), torch.tensor([9]), memory, choose_k=3, alpha=0.1)
    assert alone["positive_rate"].item() == 0.0


def test_stream_sampler_episodes_and_resume() -> None:
    dataset = synthetic_set()
    sampler = StreamSampler(dataset, n_way=3, batch_episodes=2, shows_per_class=2, seed=4)
    steps = [sampler.next_batch() for _ in range(6)]  # one whole episode
    labels = np.stack([label for _, label in steps])  # (6, 2)
    assert labels.shape == (6, 2)
    for episode in range(2):  # each of its 3 classes twice, labels unique per episode
        assert sorted(labels[:, episode].tolist()) == sorted(
            [episode * 3 + c for c in range(3)] * 2)
    state = json.loads(json.dumps(sampler.state_dict()))
    rest = [sampler.next_batch() for _ in range(8)]
    resumed = StreamSampler(dataset, 3, 2, 2, seed=99)
    resumed.load_state_dict(state)
    for images, labels_now in rest:
        again_images, again_labels = resumed.next_batch()
        assert np.array_equal(images, again_images) and np.array_equal(labels_now, again_labels)


@pytest.mark.parametrize("name", ["protonet", "matching"])
def test_overfits_one_episode(name: str) -> None:
    torch.manual_seed(0)
    images = torch.from_numpy(synthetic_set(5).images[:, :3]).float().div(255)
    batch = images.transpose(0, 1).reshape(15, 1, 28, 28)  # drawing-major, 5-way 1+2
    encoder = Conv4Backbone(hidden_channels=16)
    network = encoder if name == "protonet" else MatchingNetwork.__new__(MatchingNetwork)
    if name == "matching":
        from gaussmem.config import MatchingConfig

        network = MatchingNetwork(MatchingConfig(hidden_channels=16, cosine_scale=10.0))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        embeddings = network(batch)
        terms = (prototypical_loss(embeddings, 5, 1) if name == "protonet"
                 else matching_loss(network, embeddings, 5, 1, 10.0))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < 0.1 * losses[0] and terms["accuracy"].item() == 1.0


def test_kaiser_overfits_one_episode() -> None:
    """Fixed memory of 5 classes; queries = other drawings: the loss falls to -alpha."""
    torch.manual_seed(0)
    images = torch.from_numpy(synthetic_set(5).images[:, :2]).float().div(255)
    encoder = Conv4Backbone(hidden_channels=16)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    labels = torch.arange(5)
    losses = []
    for _ in range(40):
        memory = KeyMemory(10, encoder.out_features)
        memory.update_(encoder(images[:, 0:1]).detach(), labels)
        queries = F.normalize(encoder(images[:, 1:2]), dim=1)
        terms = memory_loss(queries, labels, memory, choose_k=4, alpha=0.1)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < losses[0] and losses[-1] == pytest.approx(-0.1, abs=0.02)
    assert terms["accuracy"].item() == 1.0


@pytest.mark.parametrize("averaging", [[], ["optim.ema_decay=0.9"]],
                         ids=["trained-weights", "weight-average"])
@pytest.mark.parametrize("name", BASELINES)
def test_train_evaluate_and_resume_through_the_generic_loop(
        name: str, averaging: list[str], tmp_path: Path) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=[f"method={name}", "budget.max_steps=8",
                                         *averaging])
    train(config, tmp_path / "straight", dataset, dataset, progress=False)
    train(config, tmp_path / "resumed", dataset, dataset, progress=False, stop_at_step=5)
    result = train(config, tmp_path / "resumed", dataset, dataset, progress=False,
                   resume=True)
    assert result.step == 8
    straight = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)
    resumed = load_checkpoint(tmp_path / "resumed" / LAST_CHECKPOINT)
    assert straight["method"] == name and (straight["memory"] is None) == (name != "kaiser")
    assert (straight["trained_model"] is None) == (not averaging)
    for entry in ("model", "trained_model"):
        for key, value in (straight[entry] or {}).items():
            assert torch.equal(value, resumed[entry][key]), (entry, key)
    reports = [evaluate_checkpoint(tmp_path / run / LAST_CHECKPOINT, n_way=3, n_shot=2,
                                   n_query=3, episodes=4, seed=1, dataset=dataset)["result"]
               for run in ("straight", "resumed")]
    for report in reports:
        report.pop("seconds")
    assert reports[0] == reports[1] and reports[0]["accuracy"]["episodes"] == 4
    records = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert any(r["kind"] == "val" for r in records)
    assert not (tmp_path / "straight" / "figures").exists()


@pytest.mark.parametrize("name", BASELINES)
def test_online_protocol_runs_for_every_baseline(name: str) -> None:
    classifier = classifiers()[name]
    dataset = synthetic_set(6)
    result = evaluate_online(classifier, dataset, n_way=3, max_shot=2, episodes=2, seed=0)
    assert set(result.per_shot) == {"0", "1", "2"}
    # A drawing shown before any example of its class cannot be labelled right.
    assert result.per_shot["0"].mean == 0.0
    # The synthetic classes are distinct templates: every baseline beats chance.
    sq = evaluate_support_query(classifier, dataset, n_way=3, n_shot=1, n_query=2,
                                episodes=2, seed=0)
    assert sq.accuracy.episodes == 2 and sq.accuracy.mean > 100 / 3


def test_mavae_run_leaves_figures_when_the_command_asks(tmp_path: Path) -> None:
    """`gaussmem train` writes the figures through `on_finish`; the library's `train`
    alone writes none, and the summary names the folder only when there is one."""
    dataset = synthetic_set()
    config = resolve("smoke", overrides=["run_figures=true", "budget.max_steps=2"])
    bare = train(config, tmp_path / "bare", dataset, dataset, progress=False)
    assert bare.figures is None and not (tmp_path / "bare" / "figures").exists()
    result = train(config, tmp_path / "run", dataset, dataset, progress=False,
                   on_finish=lambda trainer: write_figures(trainer, dataset))
    figures = tmp_path / "run" / "figures"
    assert result.figures == figures
    assert list(figures.glob("*.png"))
    # The generations drew z_s from the prior fitted on the training set.
    written = json.loads((figures / "figures.json").read_text())
    assert written["generation_style_prior"] == "conditional"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["figures"] == str(figures)


def test_run_figures_draw_the_best_checkpoint_not_the_last_weights(tmp_path: Path) -> None:
    """The figures show the model the run ships (best on validation): weights spoiled
    after the last checkpoint, here a decoder zeroed so it ignores z_c, must not reach
    them."""
    dataset = synthetic_set()
    config = resolve("smoke", overrides=["run_figures=true", "budget.max_steps=2"])

    def spoil_then_draw(trainer: Any) -> None:
        for parameter in trainer.method.generative_model.decoder.parameters():
            parameter.data.zero_()
        write_figures(trainer, dataset)

    result = train(config, tmp_path / "run", dataset, dataset, progress=False,
                   on_finish=spoil_then_draw)
    written = json.loads((tmp_path / "run" / "figures" / "figures.json").read_text())
    assert written["step"] == result.best_step
    assert written["decoder_sensitivity"]["content_swap"] > 0


def test_old_checkpoint_configs_still_load() -> None:
    """Configs saved before the baselines existed lack their sections: defaults apply."""
    from gaussmem.config import TrainConfig, from_dict, to_dict

    saved = to_dict(preset("cpu-quick"))
    for section in ("protonet", "matching", "kaiser", "run_figures"):
        saved.pop(section)
    for key in ("decay_every", "decay_factor", "adam_eps"):
        saved["optim"].pop(key)
    saved["episodes"].pop("n_shot")
    assert from_dict(TrainConfig, saved).model == preset("cpu-quick").model


def test_presets_name_their_methods() -> None:
    for name in BASELINES:
        assert preset(name).method == name and preset(f"{name}-cpu").method == name
    protonet = preset("protonet")
    assert (protonet.episodes.n_way, protonet.episodes.n_shot,
            protonet.episodes.images_per_class) == (60, 5, 10)
    assert (protonet.optim.schedule, protonet.optim.decay_every) == ("step", 2000)
    kaiser = preset("kaiser")
    assert (kaiser.kaiser.key_dim, kaiser.kaiser.choose_k, kaiser.kaiser.alpha,
            kaiser.kaiser.age_noise, kaiser.episodes.memory_capacity) == (128, 256, 0.1,
                                                                          8.0, 8192)


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_loss_goes_down_on_real_omniglot(name: str, real_data_dir: Path,
                                         real_cache_dir: Path) -> None:
    from gaussmem.data.omniglot import load_omniglot

    train_set = load_omniglot("vinyals", "train", data_dir=real_data_dir,
                              cache_dir=real_cache_dir)
    overrides = [f"method={name}", "episodes.n_way=10", "episodes.images_per_class=4",
                 "episodes.n_shot=1", "protonet.hidden_channels=32",
                 "matching.hidden_channels=32", "kaiser.encoder=conv4", "kaiser.key_dim=32",
                 "kaiser.choose_k=32", "kaiser.keep_prob=1.0", "episodes.batch_episodes=16",
                 "optim.lr=1e-3", "optim.schedule=constant"]
    trainer = build_trainer(resolve("smoke", overrides=overrides), Path("/unused"),
                            train_set, None)
    trainer.method.model.train()
    losses = [float(train_step(trainer)["loss"].detach()) for _ in range(150)]
    assert np.mean(losses[-30:]) < np.mean(losses[:30]) - 0.05, (losses[:30], losses[-30:])


@pytest.mark.data
@pytest.mark.slow
def test_cli_trains_and_evaluates_a_baseline(real_data_dir: Path, real_cache_dir: Path,
                                             tmp_path: Path) -> None:
    import subprocess
    import sys

    env_args = ["--data-dir", str(real_data_dir), "--cache-dir", str(real_cache_dir)]
    command = [sys.executable, "-m", "gaussmem"]
    run = tmp_path / "run"
    subprocess.run([*command, "train", "--method", "protonet", "--preset", "smoke",
                    "--max-steps", "2", "--run-dir", str(run), "--no-progress", *env_args],
                   check=True)
    out = tmp_path / "eval.json"
    subprocess.run([*command, "evaluate", "--checkpoint", str(run / LAST_CHECKPOINT),
                    "--n-way", "5", "--n-shot", "1", "--episodes", "3", "--split", "val",
                    "--json", str(out), "--no-progress", *env_args], check=True)
    report = json.loads(out.read_text())
    assert report["checkpoint"]["method"] == "protonet" and report["episodes"] == 3
    failed = subprocess.run([*command, "train", "--method", "protonet-typo", *env_args],
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "protonet" in failed.stderr
