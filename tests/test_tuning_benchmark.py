"""experiments/mavae_tuning.py: budgets, side-by-side trainings and the rows it renders,
without training anything (its trainings are stood in for by tiny processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_result_scripts import load_script


def test_budget_is_minutes_of_wall_clock_or_steps_without_one() -> None:
    tuning = load_script("mavae_tuning", "experiments")
    assert tuning.Budget(minutes=15.0).train_arguments() == ["--max-minutes", "15"]
    assert tuning.Budget(steps=2200).train_arguments() == [
        "--max-steps", "2200", "--set", "budget.max_minutes=none"]
    assert tuning.Budget(minutes=7.5).directory_prefix() == "7.5min"
    assert tuning.Budget(steps=2200).label() == "2200 steps"
    command = tuning.train_command(Path("runs/x"), ["loss.latent=1"], tuning.Budget(steps=5),
                                   seed=1, device="cuda", threads=3, cuda_graph=True)
    settings = [command[i + 1] for i, part in enumerate(command) if part == "--set"]
    assert settings == ["budget.max_minutes=none", "device=cuda", "num_threads=3",
                        "cuda_graph=true", "loss.latent=1"]


def finishing(run_dir: Path, code: int = 0) -> list[str]:
    """A stand-in training: writes summary.json (unless it fails) and exits with `code`."""
    script = ("import pathlib, sys; "
              f"sys.exit({code}) if {code} else "
              f"pathlib.Path({str(run_dir)!r}, 'summary.json').write_text('{{}}')")
    return [sys.executable, "-c", script]


def test_train_all_runs_side_by_side_notes_the_sharing_and_skips_finished_runs(
        tmp_path: Path) -> None:
    tuning = load_script("mavae_tuning", "experiments")
    runs = [tmp_path / name for name in ("a", "b", "c")]
    (runs[2]).mkdir()
    (runs[2] / "summary.json").write_text("{}")  # finished earlier: not retrained
    recorded: list[Path] = []
    tuning.train_all([(run, finishing(run)) for run in runs], parallel=2,
                     finished=recorded.append)
    assert all((run / "summary.json").exists() for run in runs)
    assert [tuning.concurrent_runs(run) for run in runs] == [1, 1, 0]
    assert (tmp_path / "a.log").exists() and not (tmp_path / "c.log").exists()
    # Every run is recorded once, the one finished earlier before any training ends.
    assert sorted(recorded) == sorted(runs) and recorded[0] == runs[2]


def test_a_failed_training_lets_the_others_finish_and_names_its_log(
        tmp_path: Path) -> None:
    tuning = load_script("mavae_tuning", "experiments")
    broken, fine = tmp_path / "broken", tmp_path / "fine"
    recorded: list[Path] = []
    with pytest.raises(SystemExit, match=r"broken\.log \(3\)"):
        tuning.train_all([(broken, finishing(broken, code=3)), (fine, finishing(fine))],
                         parallel=1, finished=recorded.append)
    assert recorded == [fine]


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    tuning = load_script("mavae_tuning", "experiments")
    interrupted, fresh = tmp_path / "interrupted", tmp_path / "fresh"
    (interrupted / "checkpoints").mkdir(parents=True)
    (interrupted / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "interrupted.log").write_text("first part\n")
    (interrupted / "sharing.json").write_text('{"concurrent_runs": 1}')
    def arguments_kept(run_dir: Path) -> list[str]:
        """A stand-in training that writes its arguments as summary.json."""
        script = ("import json, pathlib, sys; "
                  f"pathlib.Path({str(run_dir)!r}, 'summary.json')"
                  ".write_text(json.dumps(sys.argv[1:]))")
        return [sys.executable, "-c", script, "train"]
    tuning.train_all([(run, arguments_kept(run)) for run in (interrupted, fresh)], parallel=1)
    assert json.loads((interrupted / "summary.json").read_text()) == ["train", "--resume"]
    # It trained its earlier steps beside others: a resume alone does not erase that.
    assert tuning.concurrent_runs(interrupted) == 1
    assert json.loads((fresh / "summary.json").read_text()) == ["train", "--overwrite"]
    assert (tmp_path / "interrupted.log").read_text().startswith("first part\n")


def test_validation_interval_sets_checkpoints_too() -> None:
    tuning = load_script("mavae_tuning", "experiments")
    command = tuning.train_command(Path("runs/x"), [], tuning.Budget(steps=5), seed=0,
                                   device="cpu", threads=None, cuda_graph=False,
                                   validate_every=275)
    settings = [command[i + 1] for i, part in enumerate(command) if part == "--set"]
    assert settings[-2:] == ["validation.every_steps=275", "checkpoint_every=275"]


def test_rows_of_step_budgets_on_a_gpu_sit_beside_minute_budgets_on_a_cpu() -> None:
    tuning = load_script("mavae_tuning", "experiments")
    def row(minutes: float | None, steps: int | None, device: str | None,
            concurrent: int) -> dict:
        return {"variant": "v", "minutes": minutes, "max_steps": steps, "seed": 0,
                "cpu": "AMD EPYC", "device": device, "concurrent_runs": concurrent,
                "purpose": "p", "overrides": ["validation.n_way=20",
                                              "validation.episodes=1000"],
                "steps": 2200, "images_per_second": 1234.4, "best_step": 2200,
                "minutes_to_97": None, "best_val_accuracy": 95.5,
                "val_20w5s": {"mean": 98.7, "ci95": 0.1},
                "val_5w1s": {"mean": 98.8, "ci95": 0.2}}
    cpu, gpu = row(15.0, None, None, 0), row(None, 2200, "NVIDIA H100 80GB HBM3", 3)
    # An old row (no budget in steps, no device) keys like a new CPU row of its budget.
    old = {key: value for key, value in cpu.items() if key not in ("max_steps", "device")}
    assert tuning.row_key(old) == tuning.row_key(cpu) != tuning.row_key(gpu)
    markdown = tuning.render({"hardware": {"torch": "2.13.0"}, "results": [cpu, gpu]})
    lines = markdown.splitlines()
    assert lines[-2].startswith("| 15 min | v | 0 | AMD EPYC | ")
    assert lines[-1].startswith("| 2200 steps | v | 0 | NVIDIA H100 80GB HBM3 | ")
    assert "| 1234 (4 side by side) |" in lines[-1] and "| 1234 |" in lines[-2]
    assert "20w1s x 1000: 95.50 | 98.70 ± 0.10 | 98.80 ± 0.20 |" in lines[-1]


def test_trainings_outside_the_benchmark_count_in_each_runs_sharing(tmp_path: Path) -> None:
    tuning = load_script("mavae_tuning", "experiments")
    runs = [tmp_path / "a", tmp_path / "b"]
    tuning.train_all([(run, finishing(run)) for run in runs], parallel=2, other_trainings=7)
    assert [tuning.concurrent_runs(run) for run in runs] == [8, 8]


def test_the_report_lock_keeps_a_second_process_out_until_released(tmp_path: Path) -> None:
    tuning = load_script("mavae_tuning", "experiments")
    try_lock = [sys.executable, "-c",
                "import fcntl, os, sys; descriptor = os.open(sys.argv[1], os.O_RDONLY); "
                "fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path)]
    with tuning.locked_directory(tmp_path):
        assert subprocess.run(try_lock, capture_output=True).returncode != 0
    assert subprocess.run(try_lock, capture_output=True).returncode == 0


def test_rows_are_read_back_with_the_reports_cpu_and_a_missing_report_has_none(
        tmp_path: Path) -> None:
    tuning = load_script("mavae_tuning", "experiments")
    assert tuning.read_rows(tmp_path / "none.json") == []
    row = {"variant": "v", "minutes": None, "max_steps": 2200, "seed": 1,
           "device": "NVIDIA H100 80GB HBM3"}
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"hardware": {"cpu": "AMD EPYC"}, "results": [row]}))
    assert tuning.read_rows(report) == [{**row, "cpu": "AMD EPYC"}]


def test_a_variants_overrides_are_printed_for_other_scripts_to_train_it() -> None:
    tuning = load_script("mavae_tuning", "experiments")
    name = "512classes-latent1-hidden128-10steps"
    printed = subprocess.run([sys.executable, "experiments/mavae_tuning.py",
                              "--print-overrides", name], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert printed.split() == tuning.VARIANTS[name][0]
    assert "episodes.steps_per_episode=10" in printed.split()
