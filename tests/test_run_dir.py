"""Run directories and interrupts: torn metrics, reuse, orphans, disk full, signals.

Every interrupted run here is resumed and compared with an uninterrupted one: the
weights, memory and metrics' steps must be identical, not close.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import gaussmem.train
from conftest import synthetic_set
from gaussmem.checkpoint import load_checkpoint
from gaussmem.cli import main
from gaussmem.errors import MetricsError, RunDirectoryError
from gaussmem.metrics_log import MetricsLog, read_metrics
from gaussmem.presets import resolve
from gaussmem.train import LAST_CHECKPOINT, TrainingInterrupted, train

BUDGET = ["budget.max_steps=8", "log_every=1"]


def assert_same_run(straight: Path, resumed: Path) -> None:
    """Identical final weights and memory, and each metrics step logged once, as the
    uninterrupted run logged it (values of the validation records included)."""
    first, second = (load_checkpoint(run / LAST_CHECKPOINT) for run in (straight, resumed))
    assert first["step"] == second["step"]
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    for key, value in first["memory"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, second["memory"][key]), key
    records = [read_metrics(run / "metrics.jsonl") for run in (straight, resumed)]
    assert [(r["kind"], r["step"]) for r in records[0]] == [
        (r["kind"], r["step"]) for r in records[1]]
    validations = [[r["val_accuracy"] for r in run if r["kind"] == "val"] for run in records]
    assert validations[0] == validations[1]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted smoke run the interrupted ones are compared with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    dataset = synthetic_set()
    train(resolve("smoke", overrides=BUDGET), run, dataset, dataset, progress=False)
    return run


def test_resume_drops_a_torn_last_metrics_line(tmp_path: Path, straight_run: Path) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=BUDGET)
    run = tmp_path / "run"
    train(config, run, dataset, dataset, progress=False, stop_at_step=5)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        metrics.write('{"kind": "train", "step": 6, "lo')  # killed mid-write
    assert read_metrics(run / "metrics.jsonl")[-1]["step"] == 5
    train(config, run, dataset, dataset, progress=False, resume=True)
    assert_same_run(straight_run, run)


def test_a_damaged_metrics_line_before_the_last_is_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "tr\n{"kind": "train", "step": 3}\n')
    with pytest.raises(MetricsError, match=r"metrics.jsonl, line 2"):
        read_metrics(path)


@pytest.mark.parametrize("left_over", ["config.json", "metrics.jsonl", "checkpoints"])
def test_a_fresh_run_refuses_a_directory_holding_a_run_unless_overwritten(
        tmp_path: Path, left_over: str) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=["budget.max_steps=2"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("kept")
    if left_over == "checkpoints":
        (run / "checkpoints").mkdir()
    else:
        (run / left_over).write_text('{"kind": "train", "step": 999}\n')
    with pytest.raises(RunDirectoryError, match=f"already holds a run \\({left_over}\\)"):
        train(config, run, dataset, dataset, progress=False)
    train(config, run, dataset, dataset, progress=False, overwrite=True)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")][-1] == 2
    assert all(r["step"] != 999 for r in read_metrics(run / "metrics.jsonl"))
    assert (run / "notes.txt").read_text() == "kept"


def test_the_cli_refuses_a_used_run_directory_before_loading_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    missing_data = ["--data-dir", str(tmp_path / "no-data"), "--cache-dir", str(tmp_path)]
    assert main(["train", "--preset", "smoke", "--run-dir", str(run), *missing_data]) == 2
    error = capsys.readouterr().err.strip()
    assert "already holds a run (metrics.jsonl)" in error and "--overwrite" in error
    assert len(error.splitlines()) == 1
    assert main(["train", "--preset", "smoke", "--run-dir", str(run), "--resume",
                 "--overwrite", *missing_data]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_orphaned_temporaries_are_removed_on_resume(tmp_path: Path, straight_run: Path
                                                    ) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=BUDGET)
    run = tmp_path / "run"
    train(config, run, dataset, dataset, progress=False, stop_at_step=5)
    orphans = [run / "checkpoints" / ".last.ckpt.x1y2.tmp", run / ".metrics.jsonl.abc.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a file")
    (run / ".figures.q7.tmp").mkdir()
    (run / "mine.tmp").write_text("not ours")
    train(config, run, dataset, dataset, progress=False, resume=True)
    assert not any(orphan.exists() for orphan in orphans)
    assert not (run / ".figures.q7.tmp").exists() and (run / "mine.tmp").exists()
    assert_same_run(straight_run, run)


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_on_a_checkpoint_is_one_line_and_the_run_resumes(
        tmp_path: Path, straight_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=BUDGET)
    run = tmp_path / "run"
    real_save = gaussmem.train.save_checkpoint

    def save(path: Path, checkpoint: dict[str, Any]) -> None:
        if checkpoint["step"] >= 6:
            raise disk_full()
        real_save(path, checkpoint)

    monkeypatch.setattr(gaussmem.train, "save_checkpoint", save)
    with pytest.raises(RunDirectoryError) as raised:
        train(config, run, dataset, dataset, progress=False)
    message = str(raised.value)
    assert "No space left on device" in message and "--resume" in message
    assert str(run / LAST_CHECKPOINT) in message and "\n" not in message
    assert load_checkpoint(run / LAST_CHECKPOINT)["step"] == 3
    monkeypatch.undo()
    train(config, run, dataset, dataset, progress=False, resume=True)
    assert_same_run(straight_run, run)


class _FillingHandle:
    """A file handle on a disk that fills up: after `room` records it writes half of
    the next one and raises ENOSPC."""

    def __init__(self, handle: Any, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, text: str) -> int:
        if self.room == 0:
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            raise disk_full()
        self.room -= 1
        return self.handle.write(text)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def test_disk_full_on_the_metrics_is_one_line_and_the_run_resumes(
        tmp_path: Path, straight_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = synthetic_set()
    config = resolve("smoke", overrides=BUDGET)
    run = tmp_path / "run"

    class FillingLog(MetricsLog):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._handle = _FillingHandle(self._handle, room=5)

    monkeypatch.setattr(gaussmem.train, "MetricsLog", FillingLog)
    with pytest.raises(RunDirectoryError, match=r"metrics.jsonl: No space left on device"):
        train(config, run, dataset, dataset, progress=False)
    assert not (run / "metrics.jsonl").read_text().endswith("\n")  # a torn last line
    monkeypatch.undo()
    train(config, run, dataset, dataset, progress=False, resume=True)
    assert_same_run(straight_run, run)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_step_saves_and_resumes_exactly(
        tmp_path: Path, straight_run: Path, monkeypatch: pytest.MonkeyPatch,
        signal_number: int) -> None:
    """The signal arrives in the middle of step 5: the step finishes, `last` holds the
    state after it, the previous handlers are back, and resuming gives the same run."""
    dataset = synthetic_set()
    config = resolve("smoke", overrides=BUDGET)
    run = tmp_path / "run"
    real_step = gaussmem.train.train_step

    def step(trainer: Any, measure_triplet_grad: bool = False) -> dict[str, torch.Tensor]:
        if trainer.state.step == 4:
            os.kill(os.getpid(), signal_number)
        return real_step(trainer, measure_triplet_grad)

    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(gaussmem.train, "train_step", step)
    with pytest.raises(TrainingInterrupted) as raised:
        train(config, run, dataset, dataset, progress=False)
    assert raised.value.step == 5 and raised.value.exit_status == 128 + signal_number
    assert f"stopped by {signal.Signals(signal_number).name} after step 5" in str(raised.value)
    assert load_checkpoint(run / LAST_CHECKPOINT)["step"] == 5
    assert not (run / "summary.json").exists()
    assert before == {number: signal.getsignal(number) for number in before}
    monkeypatch.undo()
    train(config, run, dataset, dataset, progress=False, resume=True)
    assert_same_run(straight_run, run)
    assert json.loads((run / "summary.json").read_text())["step"] == 8


# A real signal to a real `gaussmem train` process. Validation and checkpoints only at
# the end of the budget, so the one checkpoint an interrupted run holds is the one the
# signal made.
SUBPROCESS_RUN = ["--preset", "smoke", "--no-progress", "--set", "num_threads=1",
                  "--set", "budget.max_steps=300", "--set", "checkpoint_every=1000",
                  "--set", "validation.every_steps=1000"]


def gaussmem_command(*argv: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "gaussmem", *argv]


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    records = read_metrics(path) if path.exists() else []
    return max((r["step"] for r in records), default=0)


@pytest.fixture(scope="module")
def straight_cli_run(tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path,
                     real_cache_dir: Path) -> tuple[Path, list[str]]:
    import subprocess

    data = ["--data-dir", str(real_data_dir), "--cache-dir", str(real_cache_dir)]
    run = tmp_path_factory.mktemp("straight-cli") / "run"
    subprocess.run(gaussmem_command("train", *SUBPROCESS_RUN, "--run-dir", str(run), *data),
                   check=True, capture_output=True)
    return run, data


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_cli_run_resumes_bit_identical(
        tmp_path: Path, straight_cli_run: tuple[Path, list[str]], signal_number: int) -> None:
    import subprocess
    import time

    straight, data = straight_cli_run
    run = tmp_path / "run"
    process = subprocess.Popen(
        gaussmem_command("train", *SUBPROCESS_RUN, "--run-dir", str(run), *data),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while logged_steps(run) < 10 and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be signalled"
    process.send_signal(signal_number)
    _, stderr = process.communicate()
    assert process.returncode == 128 + signal_number, stderr
    step = load_checkpoint(run / LAST_CHECKPOINT)["step"]
    assert 10 <= step < 300 and logged_steps(run) <= step
    name = signal.Signals(signal_number).name
    assert f"stopped by {name} after step {step}" in stderr.strip().splitlines()[-1]
    subprocess.run(gaussmem_command("train", "--resume", "--run-dir", str(run),
                                    "--no-progress", *data), check=True, capture_output=True)
    assert_same_run(straight, run)
