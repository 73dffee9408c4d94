"""The `gaussmem` command line, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gaussmem.cli import main


def test_help_lists_commands_and_states_defaults(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping inside the URL
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "data" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    help_text = capsys.readouterr().out
    assert "GAUSSMEM_DATA" in help_text and "GAUSSMEM_CACHE" in help_text
    with pytest.raises(SystemExit):
        main(["data", "download", "--help"])
    download_help = " ".join(capsys.readouterr().out.split())
    assert "(default: https://github.com/brendenlake/omniglot" in download_help
    assert "(default: None)" not in help_text + download_help


def test_python_dash_m_runs_the_same_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "gaussmem", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("gaussmem ")


def test_missing_data_is_one_line_and_exit_status_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["data", "check", "--data-dir", str(tmp_path), "--cache-dir",
                   str(tmp_path / "cache")])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("gaussmem: error: Omniglot not found")
    assert str(tmp_path / "omniglot") in error
    assert "Traceback" not in error


@pytest.mark.data
def test_data_check_on_the_real_release(real_data_dir: Path, real_cache_dir: Path,
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary_path = tmp_path / "summary.json"
    status = main(["data", "check", "--data-dir", str(real_data_dir), "--cache-dir",
                   str(real_cache_dir), "--json", str(summary_path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "vinyals/train" in out and "images_background" in out
    summary = json.loads(summary_path.read_text())
    assert summary["collections"]["images_background"] == {
        "alphabets": 30, "characters": 964, "images": 19280}
    assert summary["collections"]["images_evaluation"] == {
        "alphabets": 20, "characters": 659, "images": 13180}
    assert summary["splits"]["vinyals/test"]["classes"] == 1692
    assert summary["splits"]["vinyals/disjoint"]["ok"] is True
    assert summary["splits"]["lake/train"]["classes"] == 3856
