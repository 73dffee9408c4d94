"""What a person sees while training: step N of the budget, time left, one line per
validation and a readable summary at the end (the numbers stay in summary.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import synthetic_set
from gaussmem.config import BudgetConfig, ValidationConfig
from gaussmem.presets import preset
from gaussmem.progress import format_left, time_left_seconds, validation_line
from gaussmem.train import train


def test_time_left_is_the_steps_at_the_current_pace_or_the_wall_clock_cap_if_sooner(
        ) -> None:
    steps_only = BudgetConfig(max_steps=1000, max_minutes=None)
    assert time_left_seconds(steps_only, 400, 120.0, 0.5) == pytest.approx(300.0)
    assert time_left_seconds(steps_only, 400, 120.0, None) is None
    capped = BudgetConfig(max_steps=30000, max_minutes=15.0)
    # 29,000 steps at 0.5 s would take hours; the cap ends the run in 5 minutes.
    assert time_left_seconds(capped, 1000, 600.0, 0.5) == pytest.approx(300.0)
    assert time_left_seconds(capped, 1000, 600.0, None) == pytest.approx(300.0)
    assert time_left_seconds(capped, 29999, 600.0, 0.5) == pytest.approx(0.5)
    assert time_left_seconds(capped, 1000, 1000.0, 0.5) == 0.0
    assert format_left(300.0) == "05:00" and format_left(None) == "?"


def test_a_validation_line_names_the_task_accuracy_and_best_so_far() -> None:
    validation = ValidationConfig(n_way=20, n_shot=1)
    budget = BudgetConfig(max_steps=30000, max_minutes=None)
    values = {"minutes": 4.12, "val_accuracy": 96.123, "val_ci95": 0.351}
    assert validation_line(validation, budget, 1200, values, 96.123, 1200) == (
        "step 1,200/30,000 (4.1 min): val 20-way 1-shot 96.12% ± 0.35, "
        "best 96.12% (step 1,200) (new best)")
    assert validation_line(validation, budget, 1500, values, 97.0, 900).endswith(
        "best 97.00% (step 900)")


def test_training_prints_a_line_per_validation_and_the_summary_names_the_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = synthetic_set()
    result = train(preset("smoke"), tmp_path / "run", dataset, dataset, progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "val " in line]
    validations = [json.loads(line) for line in
                   (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["kind"] == "val"]
    assert len(lines) == len(validations) >= 1
    assert lines[-1].startswith(f"step {result.step}/{result.step} (")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["checkpoint"] == str(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert summary["run_dir"] == str(tmp_path / "run")
    train(preset("smoke"), tmp_path / "quiet", dataset, dataset, progress=False,
          validation_lines=False)
    assert capsys.readouterr().out == ""


def test_the_train_command_ends_with_a_readable_summary(tmp_path: Path) -> None:
    from gaussmem.commands.train import summary_text

    dataset = synthetic_set()
    config = preset("smoke")
    result = train(config, tmp_path / "run", dataset, dataset, progress=False,
                   validation_lines=False)
    text = summary_text(result, config)
    assert text.startswith(f"gaussmem train: done, mavae {result.step} steps in ")
    assert f"best validation {config.validation.n_way}-way" in text
    assert f"checkpoint: {tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}" in text
    assert f"summary:    {tmp_path / 'run' / 'summary.json'}" in text
    assert not text.lstrip().startswith("{")
    assert "figures:" not in text  # the smoke preset writes none
    figures = tmp_path / "run" / "figures"
    assert f"figures:    {figures}" in summary_text(replace(result, figures=figures), config)


def test_the_train_command_writes_the_figures_and_names_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The command, not the training loop, writes `figures/`; its summary line and
    summary.json both name the folder."""
    from gaussmem.cli import main
    from gaussmem.data import datasets
    from gaussmem.data.class_images import ClassImageSet

    train_set, held_out = synthetic_set(), synthetic_set(seed=1)
    # Distinct class names: the command refuses a validation split it trains on.
    val_set = ClassImageSet(held_out.images,
                            [f"val{i}" for i in range(held_out.n_classes)], "synthetic")
    monkeypatch.setattr(datasets, "load_split", lambda data, subset, **kwargs:
                        val_set if subset == data.val_subset else train_set)
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--set", "run_figures=true",
                 "--max-steps", "2", "--no-progress", "--run-dir", str(run)]) == 0
    figures = run / "figures"
    report = json.loads((figures / "figures.json").read_text())
    assert report["reconstruction_ratio"] > 0
    assert set(report["decoder_sensitivity"]) == {"content_swap", "style_swap"}
    assert sorted(path.name for path in figures.glob("*.png")) == [
        "generation.png", "reconstruction.png", "style_transfer.png"]
    assert json.loads((run / "summary.json").read_text())["figures"] == str(figures)
    assert f"figures:    {figures}" in capsys.readouterr().out


def test_the_bar_shows_step_n_of_the_budget_and_the_time_left(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = synthetic_set()
    config = preset("smoke")
    train(config, tmp_path / "run", dataset, dataset, validation_lines=False)
    bar = capsys.readouterr().err
    steps = config.budget.max_steps
    assert f"step 0/{steps} [" in bar and f"step {steps}/{steps} [" in bar
    assert "left=00:00]" in bar


def test_help_does_not_import_torch() -> None:
    """`gaussmem --help` and each command's parser build without torch (seconds to import
    on a small CPU): heavy imports wait for the command's handler."""
    code = ("import sys; from gaussmem.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'tqdm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
    # The entry point a person types, every import it makes listed by -X importtime.
    imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "gaussmem", "--help"],
                             capture_output=True, text=True, check=True).stderr
    assert "gaussmem.cli" in imports and "torch" not in imports


def test_evaluate_prints_its_headline_and_writes_json_only_when_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gaussmem.evaluate
    from gaussmem.cli import main

    report = {"device": "cpu", "result": {"accuracy": {"mean": 97.5, "ci95": 0.25,
                                                        "episodes": 3}}}
    monkeypatch.setattr(gaussmem.evaluate, "evaluate_checkpoint",
                        lambda *args, **kwargs: dict(report))
    assert main(["evaluate", "--checkpoint", "some.ckpt", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out == "5-way 1-shot (support-query, test, 1000 episodes, seed 0): 97.50% ± 0.25\n"
    out_file = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", "some.ckpt", "--no-progress",
                 "--json", str(out_file)]) == 0
    assert "{" not in capsys.readouterr().out
    assert json.loads(out_file.read_text())["result"]["accuracy"]["mean"] == 97.5
