"""The record every benchmark and experiment script writes: stamped, atomic, merged by
identity, so the results tables read one shape whichever script wrote the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gaussmem.plumbing import script_record
from gaussmem.plumbing.script_record import merge_by_identity, provenance, read_json, write_json


def test_provenance_names_the_command_and_the_hardware(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setattr("sys.argv", ["benchmarks/speed.py", "--steps", "3 4"])
    stamp = provenance({"cpu": "given"})
    assert stamp == {"command": "python benchmarks/speed.py --steps '3 4'",
                     "hardware": {"cpu": "given"}}
    monkeypatch.setattr(script_record, "describe_hardware", lambda: {"cpu": "taken now"})
    assert provenance()["hardware"] == {"cpu": "taken now"}


def test_written_json_reads_back_and_a_missing_file_is_none(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "report.json"
    assert read_json(path) is None
    write_json(path, {"b": 1, "a": [1, 2]}, sort_keys=True)
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    assert read_json(path) == {"a": [1, 2], "b": 1}
    write_json(path, {"concurrent_runs": 2}, indent=None)
    assert path.read_text() == '{"concurrent_runs": 2}\n'


def test_a_rerun_replaces_only_its_own_record_and_goes_last() -> None:
    records = [{"variant": "a", "seed": 0, "score": 1}, {"variant": "b", "seed": 0},
               {"variant": "a", "seed": 1}]
    rerun = {"variant": "a", "seed": 0, "score": 2}
    merged = merge_by_identity(records, rerun, lambda r: (r["variant"], r["seed"]))
    assert merged == [records[1], records[2], rerun]
    assert merge_by_identity([], rerun, lambda r: r["variant"]) == [rerun]
