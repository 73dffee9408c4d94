"""Atomic file and directory writes: a reader sees the old content or the new, never half.

Everything gaussmem writes that a later run reads (caches, checkpoints, memories, result
JSON) goes through here, so an interrupted job never leaves a truncated file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; rename it into place on success.

    The temporary file lives in the same directory so the final `os.replace` is a
    rename on one file system (atomic on POSIX). On an exception it is removed.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp",
                                    dir=final_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.replace(tmp_path, final_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(final_path: str | os.PathLike[str], payload: bytes) -> None:
    """Write `payload` to `final_path` atomically."""
    with atomic_path(final_path) as tmp_path:
        tmp_path.write_bytes(payload)


def write_text_atomic(final_path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `final_path` atomically."""
    write_bytes_atomic(final_path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(final_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside `final_dir`; rename it into place on success.

    An existing `final_dir` is replaced (it is moved aside first, then deleted), so a
    stale or corrupt directory is never mixed with new files.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp",
                                    dir=final_dir.parent))
    try:
        yield tmp_dir
        if final_dir.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".old",
                                          dir=final_dir.parent))
            os.replace(final_dir, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
