"""The data/cache directory setting and atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gaussmem.plumbing.atomic import atomic_directory, atomic_path, write_text_atomic
from gaussmem.plumbing.settings import resolve_cache_dir, resolve_data_dir


def test_flag_beats_environment_beats_default(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAUSSMEM_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("GAUSSMEM_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "gaussmem"
    monkeypatch.delenv("GAUSSMEM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdgc"))
    assert resolve_cache_dir() == tmp_path / "xdgc" / "gaussmem"


def test_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_text_atomic(target, "old")

    class PlannedError(Exception):
        pass

    with pytest.raises(PlannedError), atomic_directory(tmp_path / "dir") as staging:
        (staging / "half").write_text("half-written")
        raise PlannedError
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_atomic_directory_replaces_a_stale_one(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "stale.npy").write_text("old")
    with atomic_directory(tmp_path / "cache") as staging:
        (staging / "fresh.npy").write_text("new")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["fresh.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_keep_freed_memory_applies_on_glibc_and_is_repeatable() -> None:
    import platform

    from gaussmem.plumbing.allocator import keep_freed_memory

    glibc = platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc
    assert keep_freed_memory(heap_only=True) is glibc
    assert keep_freed_memory() is glibc  # setting it twice is harmless


@pytest.fixture
def set_umask():
    """Set the process umask for one test, restoring the previous one afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"),
                         [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_atomic_writes_honour_the_umask(tmp_path: Path, set_umask, umask: int, file_mode: int,
                                        dir_mode: int) -> None:
    set_umask(umask)
    write_text_atomic(tmp_path / "result.json", "{}")
    with atomic_directory(tmp_path / "cache") as staging:
        (staging / "images.npy").write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "cache" / "images.npy").stat().st_mode) == file_mode


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace",
                        lambda *args: (events.append("replace"), real_replace(*args))[1])
    write_text_atomic(tmp_path / "result.json", "{}")
    # The file before the rename, its directory after it.
    assert events == ["fsync", "replace", "fsync"]
    events.clear()
    with atomic_directory(tmp_path / "cache") as staging:
        (staging / "a").write_text("a")
        (staging / "b").write_text("b")
    assert events[:3] == ["fsync"] * 3 and events[-2:] == ["replace", "fsync"]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_an_interrupted_atomic_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch,
                                                              interrupt) -> None:
    write_text_atomic(tmp_path / "result.json", "old")
    with pytest.raises(interrupt), atomic_path(tmp_path / "result.json") as temporary:
        temporary.write_text("half")
        raise interrupt
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(interrupt()))
    with pytest.raises(interrupt):
        write_text_atomic(tmp_path / "result.json", "new")
    with pytest.raises(interrupt), atomic_directory(tmp_path / "cache") as staging:
        (staging / "a").write_text("a")
    assert (tmp_path / "result.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
