"""The run directory's life cycle: refuse to mix two runs, clear or tidy it, name write
failures.

A run directory holds one run: its `config.json`, `metrics.jsonl`, checkpoints and what
the end of training writes. A fresh run in a directory that already holds one would
append to its metrics (steps logged twice) and overwrite its checkpoints, so it is
refused unless the user asks for the old run to be cleared. Interrupted atomic writes
(gaussmem.plumbing.atomic) leave `.NAME.*.tmp` orphans, removed when a run starts or resumes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gaussmem.errors import RunDirectoryError

#: What a run writes into its directory; other files (notes a script keeps beside a
#: run, say) are neither a sign of a run nor removed by `clear_run`.
RUN_ENTRIES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints", "figures",
               "tensorboard")

#: Sub-directories whose atomic writes can leave orphans, besides the run directory.
_ATOMIC_SUBDIRS = ("checkpoints", "figures")


def run_entries(run_dir: Path) -> list[Path]:
    """The entries of `RUN_ENTRIES` present in `run_dir` (empty: it holds no run)."""
    return [run_dir / name for name in RUN_ENTRIES if (run_dir / name).exists()]


def check_fresh_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse a fresh run in `run_dir` if it holds a run and `overwrite` is not set."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"run directory {run_dir} is a file")
    held = run_entries(run_dir) if run_dir.is_dir() else []
    if held and not overwrite:
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({', '.join(p.name for p in held)}); pass "
            "--resume to continue it, --overwrite to replace it, or choose another --run-dir")


def clear_run(run_dir: Path) -> None:
    """Remove the files of the run held in `run_dir` (`RUN_ENTRIES`), nothing else."""
    for path in run_entries(run_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_orphans(run_dir: Path) -> list[Path]:
    """Delete the temporaries interrupted atomic writes left in `run_dir`; return them.

    Only names of the atomic helpers' form (`.NAME.RANDOM.tmp`) are touched. Call it
    when no other process writes into the directory: a run directory has one writer.
    """
    removed = []
    for directory in (run_dir, *(run_dir / name for name in _ATOMIC_SUBDIRS)):
        if not directory.is_dir():
            continue
        for orphan in sorted(directory.glob(".*.tmp")):
            if orphan.is_dir() and not orphan.is_symlink():
                shutil.rmtree(orphan)
            else:
                orphan.unlink()
            removed.append(orphan)
    return removed


def write_failed(path: Path, error: OSError, last_checkpoint: Path) -> RunDirectoryError:
    """The one-line error for a write into the run directory that failed (disk full,
    permissions): what failed, and that the run can go on from its last checkpoint."""
    reason = error.strerror or os.strerror(error.errno or 0) or str(error)
    if last_checkpoint.exists():
        then = (f"its last checkpoint {last_checkpoint} is intact: free the space (or fix "
                "the cause) and continue with --resume")
    else:
        then = "no checkpoint was written yet"
    return RunDirectoryError(f"cannot write {path}: {reason}; {then}")
