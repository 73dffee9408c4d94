"""The data/cache directory setting and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gaussmem.atomic import atomic_directory, write_text_atomic
from gaussmem.settings import resolve_cache_dir, resolve_data_dir


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

    from gaussmem.allocator import keep_freed_memory

    glibc = platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc
    assert keep_freed_memory() is glibc  # setting it twice is harmless
