"""Argument types that check a command's numbers and output paths as they are parsed.

A bad value ends the command before it loads a checkpoint or a dataset, with argparse's
error naming the option and the value (exit status 2), instead of a traceback after the
work, or a run that "succeeds" with `nan%` or zero steps.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

#: Seeds feed NumPy's legacy global RNG (gaussmem.plumbing.seeding), which takes 32 bits.
MAX_SEED = 2**32 - 1


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def finite_float(value: str) -> float:
    """Any finite number (a threshold, a similarity)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def positive_int(value: str) -> int:
    """A count or size: an integer >= 1."""
    number = _integer(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """An integer >= 0 (a shift in pixels, 0: none)."""
    number = _integer(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value!r}")
    return number


def seed(value: str) -> int:
    """A seed in 0..2**32-1."""
    number = _integer(value)
    if not 0 <= number <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """A finite number > 0 (a duration)."""
    number = finite_float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    """A finite number >= 0 (an angle, 0: none)."""
    number = finite_float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value!r}")
    return number


def output_file(value: str) -> str:
    """A file the command can write atomically (its folder exists or can be made, and
    takes new files). Checked before any work: today's result is not lost to a typo."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory, not a file")
    problem = unwritable_problem(path.parent)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write {value!r}: {problem}")
    return value


def output_directory(value: str) -> str:
    """A directory the command can create (or write into)."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a file, not a directory")
    problem = unwritable_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write into {value!r}: {problem}")
    return value


def unwritable_problem(directory: Path) -> str | None:
    """Why files cannot be created in `directory` (made as needed), or None. Creates
    nothing: the nearest existing ancestor must be a directory that takes new entries."""
    ancestor = directory.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} is not writable"
    return None
