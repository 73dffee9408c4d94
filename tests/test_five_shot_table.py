"""experiments/make_five_shot_table.py: each sweep row joined with its run's 10,000-episode
validation 5-way 5-shot file, found by the run directory's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_result_scripts import load_script


def sweep_row(variant: str, seed: int, device: str | None) -> dict:
    return {"variant": variant, "minutes": None, "max_steps": 2200, "seed": seed,
            "cpu": "Intel(R) Xeon(R) Processor", "device": device, "purpose": "why",
            "best_val_accuracy": 95.79, "best_step": 2200,
            "val_20w5s": {"mean": 98.75, "ci95": 0.09},
            "val_5w1s": {"mean": 98.83, "ci95": 0.18}}


def test_run_names_match_the_tuning_benchmarks_run_directories() -> None:
    table = load_script("make_five_shot_table", "experiments")
    tuning = load_script("mavae_tuning", "experiments")
    budget = tuning.Budget(steps=2200)
    gpu = sweep_row("512classes-latent1-hidden128", 1, "NVIDIA H100 80GB HBM3")
    assert table.run_name(gpu) == (f"{budget.directory_prefix()}-gpu-"
                                   "512classes-latent1-hidden128-seed1")
    cpu = {**sweep_row("v", 0, None), "minutes": 15.0, "max_steps": None}
    assert table.run_name(cpu) == f"{tuning.Budget(minutes=15.0).directory_prefix()}-v"


def test_a_row_shows_its_five_shot_cell_or_says_it_was_not_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = load_script("make_five_shot_table", "experiments")
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    measured = sweep_row("measured", 0, "NVIDIA H100 80GB HBM3")
    missing = sweep_row("missing", 0, "NVIDIA H100 80GB HBM3")
    cell = {"accuracy": {"mean": 99.6659, "ci95": 0.0246},
            "error_percent_by_kind": {"other_rotation": 0.0176, "same_alphabet": 0.1467,
                                      "other_alphabet": 0.1699}}
    (tmp_path / "episode_errors" / "val").mkdir(parents=True)
    (tmp_path / "episode_errors" / "val"
     / "episode_errors-2200steps-gpu-measured-last-val-5w5s-10000episodes.json"
     ).write_text(json.dumps({"cells": {"5w5s": cell}}))
    lines = table.render({"results": [measured, missing]}).splitlines()
    assert lines[-2].startswith("| 2200 steps | measured | 0 | NVIDIA H100 80GB HBM3 | "
                                "20w1s: 95.79 (step 2200) | 98.75 ± 0.09 | 98.83 ± 0.18 | "
                                "99.67 ± 0.02 | 0.018 / 0.147 / 0.170 | why |")
    assert "| not measured | - |" in lines[-1]
