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
    rename on one file system (atomic on POSIX). It is flushed to disk before the rename
    and the directory after it, so a crash never leaves a renamed but empty file; it gets
    the mode the user's umask gives a new file (mkstemp's is 0600). On any exception,
    Ctrl-C included, it is removed.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp",
                                    dir=final_path.parent)
    tmp_path = Path(tmp_name)
    try:
        os.close(fd)
        yield tmp_path
        _fsync_path(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(final_path.parent)


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
    stale or corrupt directory is never mixed with new files. As in `atomic_path`, its
    files are flushed to disk before the rename, and the directory gets the mode the
    user's umask gives a new directory (mkdtemp's is 0700).
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp",
                                    dir=final_dir.parent))
    try:
        yield tmp_dir
        for directory, _, files in os.walk(tmp_dir):
            for name in files:
                _fsync_path(Path(directory, name))
            _fsync_directory(Path(directory))
        os.chmod(tmp_dir, 0o777 & ~_umask())
        if final_dir.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".old",
                                          dir=final_dir.parent))
            os.replace(final_dir, stale / "old")
            # The new directory goes in before the old one is deleted: a crash between
            # the renames is the only moment `final_dir` is missing, not a whole rmtree.
            os.replace(tmp_dir, final_dir)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    _fsync_directory(final_dir.parent)


def _umask() -> int:
    """The process's umask. POSIX reads it only by setting it, so it is set back at once
    (Linux also shows it in /proc/self/status, which avoids even that instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename) to disk, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems and platforms cannot fsync a directory
    finally:
        os.close(fd)
