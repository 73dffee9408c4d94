"""Every command refuses bad numbers and unwritable outputs before doing any work.

Each case goes through `gaussmem.cli.main` with arguments that would otherwise load a
checkpoint or data (neither exists here: reaching them would fail differently), and
must end with exit status 2 and one error line naming the value, with nothing written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gaussmem.cli import main

#: `{tmp}` is the test's temporary directory; `{file}` an existing regular file in it.
EVALUATE = ["evaluate", "--checkpoint", "{tmp}/missing.ckpt", "--data-dir", "{tmp}/data"]
FIGURE = ["--checkpoint", "{tmp}/missing.ckpt", "--data-dir", "{tmp}/data"]
TRAIN = ["train", "--preset", "smoke", "--run-dir", "{tmp}/run", "--data-dir", "{tmp}/data"]

CASES = {
    # evaluate: counts, seeds, threads, views, output path
    "evaluate-n-way-0": ([*EVALUATE, "--n-way", "0"], "--n-way", "'0'"),
    "evaluate-n-shot-negative": ([*EVALUATE, "--n-shot", "-1"], "--n-shot", "'-1'"),
    "evaluate-n-query-0": ([*EVALUATE, "--n-query", "0"], "--n-query", "'0'"),
    "evaluate-episodes-0": ([*EVALUATE, "--episodes", "0"], "--episodes", "'0'"),
    "evaluate-seed-negative": ([*EVALUATE, "--seed", "-5"], "--seed", "'-5'"),
    "evaluate-seed-too-large": ([*EVALUATE, "--seed", str(2 ** 32)], "--seed", str(2**32)),
    "evaluate-threads-0": ([*EVALUATE, "--threads", "0"], "--threads", "'0'"),
    "evaluate-shift-negative": ([*EVALUATE, "--shift-pixels", "-2"], "--shift-pixels", "'-2'"),
    "evaluate-rotation-nan": ([*EVALUATE, "--rotation-degrees", "nan"], "--rotation-degrees",
                              "'nan'"),
    "evaluate-rotation-inf": ([*EVALUATE, "--rotation-degrees", "inf"], "--rotation-degrees",
                              "'inf'"),
    "evaluate-rotation-negative": ([*EVALUATE, "--rotation-degrees", "-10"],
                                   "--rotation-degrees", "'-10'"),
    "evaluate-json-under-a-file": ([*EVALUATE, "--json", "{file}/out.json"], "--json",
                                   "{file}/out.json"),
    "evaluate-json-is-a-directory": ([*EVALUATE, "--json", "{tmp}"], "--json", "{tmp}"),
    # the figure commands
    "reconstruct-n-way-0": (["reconstruct", *FIGURE, "--out", "{tmp}/a.png", "--n-way", "0"],
                            "--n-way", "'0'"),
    "reconstruct-scale-0": (["reconstruct", *FIGURE, "--out", "{tmp}/a.png", "--scale", "0"],
                            "--scale", "'0'"),
    "generate-n-samples-0": (["generate", *FIGURE, "--out", "{tmp}/a.png", "--n-samples",
                              "0"], "--n-samples", "'0'"),
    "generate-out-under-a-file": (["generate", *FIGURE, "--out", "{file}/a.png"], "--out",
                                  "{file}/a.png"),
    "generate-temperature-negative": (["generate", *FIGURE, "--out", "{tmp}/a.png",
                                       "--temperature", "-0.5"], "--temperature", "'-0.5'"),
    "generative-report-temperature-nan": (["generative-report", *FIGURE, "--temperature",
                                           "nan"], "--temperature", "'nan'"),
    "style-transfer-n-style-0": (["style-transfer", *FIGURE, "--out", "{tmp}/a.png",
                                  "--n-style", "0"], "--n-style", "'0'"),
    "latent-check-episodes-0": (["latent-check", *FIGURE, "--episodes", "0"], "--episodes",
                                "'0'"),
    "latent-check-seed-negative": (["latent-check", *FIGURE, "--seed", "-1"], "--seed",
                                   "'-1'"),
    "latent-check-threads-0": (["latent-check", *FIGURE, "--threads", "0"], "--threads",
                               "'0'"),
    # data
    "data-check-json-under-a-file": (["data", "check", "--data-dir", "{tmp}/data", "--json",
                                      "{file}/summary.json"], "--json", "{file}/summary.json"),
    "pack-lfw-out-under-a-file": (["data", "pack-lfw", "--data-dir", "{tmp}/data", "--out",
                                   "{file}/pack.npz"], "--out", "{file}/pack.npz"),
    # train: its own flags ...
    "train-max-steps-0": ([*TRAIN, "--max-steps", "0"], "--max-steps", "'0'"),
    "train-max-minutes-0": ([*TRAIN, "--max-minutes", "0"], "--max-minutes", "'0'"),
    "train-max-minutes-nan": ([*TRAIN, "--max-minutes", "nan"], "--max-minutes", "'nan'"),
    "train-seed-negative": ([*TRAIN, "--seed", "-1"], "--seed", "'-1'"),
    "train-run-dir-under-a-file": (["train", "--preset", "smoke", "--run-dir", "{file}/run",
                                    "--data-dir", "{tmp}/data"], "--run-dir", "{file}/run"),
    # ... and the config's fields through --set
    "set-max-steps-0": ([*TRAIN, "--set", "budget.max_steps=0"], "budget.max_steps", "0"),
    "set-max-minutes-negative": ([*TRAIN, "--set", "budget.max_minutes=-1"],
                                 "budget.max_minutes", "-1"),
    "set-lr-nan": ([*TRAIN, "--set", "optim.lr=nan"], "optim.lr", "nan"),
    "set-lr-inf": ([*TRAIN, "--set", "optim.lr=inf"], "optim.lr", "inf"),
    "set-lr-0": ([*TRAIN, "--set", "optim.lr=0"], "optim.lr", "0"),
    "set-validation-every-0": ([*TRAIN, "--set", "validation.every_steps=0"],
                               "validation.every_steps", "0"),
    "set-checkpoint-every-0": ([*TRAIN, "--set", "checkpoint_every=0"], "checkpoint_every",
                               "0"),
    "set-log-every-0": ([*TRAIN, "--set", "log_every=0"], "log_every", "0"),
    "set-validation-episodes-0": ([*TRAIN, "--set", "validation.episodes=0"],
                                  "validation.episodes", "0"),
    "set-seed-too-large": ([*TRAIN, "--set", f"seed={2 ** 32}"], "seed", str(2**32)),
    "set-num-threads-0": ([*TRAIN, "--set", "num_threads=0"], "num_threads", "0"),
    "set-n-way-0": ([*TRAIN, "--set", "episodes.n_way=0"], "episodes.n_way", "0"),
    "set-n-shot-no-query": ([*TRAIN, "--set", "episodes.n_shot=2"], "n_shot", "2"),
    "set-temperature-nan": ([*TRAIN, "--set", "similarity.temperature=nan"],
                            "similarity.temperature", "nan"),
    "set-rotation-inf": ([*TRAIN, "--set", "augment.max_rotation_degrees=inf"],
                         "augment.max_rotation_degrees", "inf"),
    # a section's own check of its values (VAEConfig's)
    "set-content-to-decoder-unknown": ([*TRAIN, "--set", "model.content_to_decoder=mode"],
                                       "content_to_decoder", "mode"),
    "set-likelihood-unknown": ([*TRAIN, "--set", "model.likelihood=poisson"],
                               "likelihood", "poisson"),
}


@pytest.mark.parametrize(("argv", "names", "value"), CASES.values(), ids=CASES.keys())
def test_bad_values_are_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], names: str,
        value: str) -> None:
    existing_file = tmp_path / "a-file"
    existing_file.write_text("")

    def fill(text: str) -> str:
        return text.format(tmp=tmp_path, file=existing_file)

    try:
        status = main([fill(item) for item in argv])
    except SystemExit as exit_:  # argparse's own error exit
        status = exit_.code
    assert status == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines()
                   if "error:" in line]
    assert len(error_lines) == 1, error_lines
    assert names in error_lines[0] and fill(value) in error_lines[0], error_lines[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"], "nothing written"


def test_evaluate_refuses_a_shot_count_that_leaves_no_query(tmp_path: Path) -> None:
    """With --n-query left to its default, 20 shots of Omniglot's 20 drawings left no
    query: the evaluation ran and reported nan%."""
    from conftest import synthetic_set
    from gaussmem.errors import EpisodeError
    from gaussmem.evaluate import evaluate_checkpoint
    from gaussmem.presets import preset
    from gaussmem.train import LAST_CHECKPOINT, train

    dataset = synthetic_set()
    train(preset("smoke"), tmp_path / "run", dataset, None, progress=False,
          stop_at_step=1)
    with pytest.raises(EpisodeError, match=r"n_shot=20 leaves no query image per class"):
        evaluate_checkpoint(tmp_path / "run" / LAST_CHECKPOINT, n_way=3, n_shot=20,
                            episodes=2, dataset=dataset)


def test_print_config_shows_the_resolved_preset_without_training(
        tmp_path, capsys) -> None:
    import json

    from gaussmem.cli import main

    run_dir = tmp_path / "never"
    assert main(["train", "--preset", "cpu-quick", "--set", "loss.triplet=7",
                 "--run-dir", str(run_dir), "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["loss"]["triplet"] == 7.0 and config["episodes"]["n_way"] == 32
    assert not run_dir.exists()
