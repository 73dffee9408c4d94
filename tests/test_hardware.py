"""What results JSON record about the code: gaussmem's version and, from a checkout, its
commit, so two runs of one config from different code can be told apart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gaussmem import __version__
from gaussmem.hardware import code_version, describe_hardware

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
