"""`download_omniglot`: verified, atomic, and clear when offline (no real network used)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gaussmem.data import download
from gaussmem.data.download import RemoteFile, download_omniglot
from gaussmem.errors import DataError


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local folder served as file:// with two small 'release' files and their MD5s."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    files = []
    for name in ("images_background.zip", "images_evaluation.zip"):
        payload = f"pretend zip {name}".encode()
        (folder / name).write_bytes(payload)
        files.append(RemoteFile(name, hashlib.md5(payload).hexdigest()))
    monkeypatch.setattr(download, "OMNIGLOT_FILES", tuple(files))
    return folder


def test_downloads_and_verifies(mirror: Path, tmp_path: Path) -> None:
    written = download_omniglot(tmp_path / "data" / "omniglot", mirror.as_uri())
    assert [p.name for p in written] == ["images_background.zip", "images_evaluation.zip"]
    assert written[0].read_bytes() == (mirror / "images_background.zip").read_bytes()


def test_checksum_mismatch_leaves_nothing(mirror: Path, tmp_path: Path) -> None:
    (mirror / "images_evaluation.zip").write_bytes(b"tampered")
    destination = tmp_path / "omniglot"
    with pytest.raises(DataError, match="does not match the official"):
        download_omniglot(destination, mirror.as_uri())
    assert sorted(p.name for p in destination.iterdir()) == ["images_background.zip"]


def test_offline_is_a_clear_error(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback is closed: the connection is refused at once.
    with pytest.raises(DataError, match="may be offline.*by hand"):
        download_omniglot(tmp_path / "omniglot", "http://127.0.0.1:9/omniglot", timeout_s=5)
    assert list((tmp_path / "omniglot").iterdir()) == []
