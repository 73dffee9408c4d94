"""experiments/face_validation_cells.py: a run's validation cells and generative numbers
come from its own records (none rescored when they exist), in the table's columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_result_scripts import load_script


def write(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def fake_run(root: Path, records: Path, name: str, augment: dict, accuracy: float) -> Path:
    """A run directory and its records, as training and the scoring commands leave them."""
    run_dir = root / "runs" / name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"not read")
    write(run_dir / "config.json", {"seed": 1, "num_threads": None, "augment": augment})
    write(run_dir / "summary.json", {"step": 600, "best_step": 550})
    for cell_index, cell in enumerate(("5w1s", "5w5s", "20w1s", "20w5s")):
        write(records / f"{name}-{cell}.json",
              {"result": {"accuracy": {"mean": accuracy + cell_index, "ci95": 0.25}},
               "hardware": {"cpu": "AMD EPYC", "cpu_cores": 2, "cpu_bfloat16": []}})
    write(records / f"{name}-generative.json", {
        "checkpoint": {"step": 550},
        "reconstruction": {"squared_error_ratio": 0.5314},
        "decoder_sensitivity": {"content_swap": 0.1009, "style_swap": 0.0580}})
    return run_dir


def test_rows_from_existing_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cells = load_script("face_validation_cells", "experiments")
    records = tmp_path / "records"
    monkeypatch.setattr(cells, "ROOT", tmp_path)
    monkeypatch.setattr(cells, "RECORD_DIR", records)

    def no_scoring(*args: object, **kwargs: object) -> None:
        raise AssertionError("an existing record was scored again")

    monkeypatch.setattr(cells.subprocess, "run", no_scoring)
    plain = fake_run(tmp_path, records, "plain", {"max_rotation_degrees": 0.0,
                                                  "max_scale": 0.0, "max_shift": 0.0}, 70.0)
    distorted = fake_run(tmp_path, records, "distorted", {
        "max_rotation_degrees": 10.0, "max_scale": 0.1, "max_shift": 0.05}, 80.0)
    out = tmp_path / "table.md"
    assert cells.main(["--row", f"no distortions:{plain}", "--row", f"with them:{distorted}",
                       "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| no distortions (`plain`) | 1 | 2 | off | 600 (550) | "
                              "70.0 ± 0.2 | 71.0 ± 0.2 | 72.0 ± 0.2 | 73.0 ± 0.2 | 0.531 | "
                              "0.101 / 0.058 |")
    assert "| with them (`distorted`) | 1 | 2 | ±10°, ±0.1, ±0.05 | 600 (550) | 80.0" in rows[2]
    assert "Scored on: 2-core CPU (AMD EPYC)." in out.read_text()


def test_row_needs_a_label_and_a_checkpoint(tmp_path: Path) -> None:
    cells = load_script("face_validation_cells", "experiments")
    with pytest.raises(SystemExit, match="expected LABEL:RUN_DIR"):
        cells.main(["--row", "runs/x", "--out", str(tmp_path / "t.md")])
    with pytest.raises(SystemExit, match="no such checkpoint"):
        cells.main(["--row", f"x:{tmp_path / 'missing'}", "--out", str(tmp_path / "t.md")])
