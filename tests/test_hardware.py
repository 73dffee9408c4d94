"""What results JSON record about the code: gaussmem's version and, from a checkout, its
commit, so two runs of one config from different code can be told apart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gaussmem import __version__
from gaussmem.plumbing import hardware
from gaussmem.plumbing.hardware import busy_cpu_warning, code_version, describe_hardware

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repository: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-C", str(repository), "-c", "user.name=t",
                           "-c", "user.email=t@t", *arguments], check=True,
                          capture_output=True, text=True).stdout.strip()


def checkout_with_package(root: Path) -> Path:
    """A git repository laid out like gaussmem's: `src/gaussmem/`, one commit."""
    package = root / "src" / "gaussmem"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (root / "notes.md").write_text("notes\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return package


@needs_git
def test_a_checkout_reports_its_commit_and_uncommitted_source(tmp_path: Path) -> None:
    package = checkout_with_package(tmp_path)
    commit = git(tmp_path, "rev-parse", "--short=12", "HEAD")
    assert code_version(package) == f"{__version__}+g{commit}"
    (tmp_path / "notes.md").write_text("edited\n")  # outside src/: still clean code
    (tmp_path / "src" / "new_module.py").write_text("")  # untracked: not counted
    assert code_version(package) == f"{__version__}+g{commit}"
    (package / "__init__.py").write_text("x = 2\n")
    assert code_version(package) == f"{__version__}+g{commit}.dirty"


@needs_git
def test_a_copy_inside_another_repository_or_outside_git_reports_the_version(
        tmp_path: Path) -> None:
    checkout_with_package(tmp_path / "project")
    installed = tmp_path / "project" / ".venv" / "site-packages" / "gaussmem"
    installed.mkdir(parents=True)
    assert code_version(installed) == __version__
    loose = tmp_path / "loose" / "gaussmem"
    loose.mkdir(parents=True)
    assert code_version(loose) == __version__


def test_hardware_description_names_the_code() -> None:
    assert describe_hardware()["gaussmem"].startswith(__version__)


@pytest.mark.parametrize(("others", "cores", "threads", "suggested"), [
    (1, 2, 2, 1), (2, 2, 2, 1), (4, 16, 16, 12), (9, 4, 4, 1), (60, 64, 8, 4)])
def test_a_busy_cpu_is_named_with_the_threads_that_would_suit_it(
        others: float, cores: int, threads: int, suggested: int) -> None:
    warning = busy_cpu_warning(others, cores, threads)
    assert warning is not None and f"({others:g} other tasks running, {cores} cores)" in warning
    assert f"--set num_threads={suggested} " in warning


def test_a_one_thread_training_on_a_busy_cpu_is_not_told_to_take_one_thread() -> None:
    warning = busy_cpu_warning(2, 2, 1)
    assert warning is not None and "training will run 1 thread:" in warning
    assert "num_threads" not in warning and "slower until the other work ends" in warning


@pytest.mark.parametrize(("others", "cores", "threads"), [
    (0, 2, 2), (0.5, 2, 2), (1, 2, 1), (3, 16, 12)])
def test_an_idle_or_roomy_cpu_draws_no_warning(others: float, cores: int, threads: int
                                              ) -> None:
    assert busy_cpu_warning(others, cores, threads) is None


def test_other_running_tasks_reads_the_running_count_without_this_process(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    readings = iter(["0.10 0.20 0.30 3/120 999\n", "0.10 0.20 0.30 1/120 999\n",
                     "0.10 0.20 0.30 3/120 999\n"])
    real_open = open

    def fake_open(path: str, *args: object, **kwargs: object) -> object:
        if path == "/proc/loadavg":
            file = tmp_path / "loadavg"
            file.write_text(next(readings))
            return real_open(file, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    # The median of 3, 1, 3 running tasks, less this process: a brief dip is ignored.
    assert hardware.other_running_tasks(samples=3, interval_s=0) == 2
    monkeypatch.setattr("builtins.open", lambda *args, **kwargs: (_ for _ in ()).throw(
        FileNotFoundError("/proc/loadavg")))
    assert hardware.other_running_tasks(samples=3, interval_s=0) is None


def test_gaussmem_train_warns_on_a_busy_cpu_only_when_it_trains_there(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from gaussmem.commands.train import _warn_if_the_cpu_is_busy
    from gaussmem.presets import resolve

    monkeypatch.setattr(hardware, "other_running_tasks", lambda: 2.0)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    _warn_if_the_cpu_is_busy(resolve("smoke", overrides=["device=cpu", "num_threads=2"]))
    assert "warning: the CPU is busy" in capsys.readouterr().err
    # The MA-VAE on a GPU: the CPU's threads hardly matter.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _warn_if_the_cpu_is_busy(resolve("smoke", overrides=["device=cuda", "num_threads=2"]))
    assert capsys.readouterr().err == ""
    # A baseline trains on the CPU whatever the device says.
    _warn_if_the_cpu_is_busy(resolve("smoke", overrides=["method=protonet",
                                                         "num_threads=2"]))
    assert "--set num_threads=1" in capsys.readouterr().err
    # Nothing else running: no warning.
    monkeypatch.setattr(hardware, "other_running_tasks", lambda: 0.0)
    _warn_if_the_cpu_is_busy(resolve("smoke", overrides=["method=protonet",
                                                         "num_threads=2"]))
    assert capsys.readouterr().err == ""


def test_cpu_in_words_names_cores_model_and_native_bfloat16_on_request() -> None:
    from gaussmem.plumbing.hardware import cpu_in_words

    record = {"cpu": "AMD EPYC", "cpu_cores": 2, "cpu_bfloat16": ["avx512_bf16"]}
    assert cpu_in_words(record) == "2-core CPU (AMD EPYC)"
    assert cpu_in_words(record, bfloat16=True) == "2-core CPU (AMD EPYC, native bfloat16)"
    assert cpu_in_words({"cpu": "X", "cores": 4, "cpu_bfloat16": []},
                        bfloat16=True) == "4-core CPU (X)"
