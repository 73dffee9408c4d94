"""Fetch the official Omniglot zips for users with internet, verified by checksum.

Nothing in gaussmem downloads implicitly: only `gaussmem data download` calls this. A
file is streamed to a temporary name beside its destination and renamed into place only
after its MD5 matches the official release's, so a failed or tampered download never
leaves a file that a later load would trust.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from gaussmem.errors import DataError
from gaussmem.plumbing.atomic import atomic_path
from gaussmem.plumbing.settings import OMNIGLOT_BASE_URL as OFFICIAL_BASE_URL


@dataclass(frozen=True)
class RemoteFile:
    """A file of the official release and the MD5 its publishers' loaders check."""

    name: str
    md5: str


OMNIGLOT_FILES: tuple[RemoteFile, ...] = (
    RemoteFile("images_background.zip", "68d2efa1b9178cc56df9314c21c6e718"),
    RemoteFile("images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811"),
)


def download_omniglot(destination: Path, base_url: str = OFFICIAL_BASE_URL, *,
                      overwrite: bool = False, timeout_s: float = 60.0) -> list[Path]:
    """Download the official zips into `destination` (the `omniglot` folder); return paths.

    Files already present are kept unless `overwrite`. Raises `DataError` when the
    server cannot be reached (offline machines) or a checksum does not match.
    """
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    for remote in OMNIGLOT_FILES:
        target = destination / remote.name
        if target.exists() and not overwrite:
            written.append(target)
            continue
        _fetch_verified(f"{base_url.rstrip('/')}/{remote.name}", target, remote.md5, timeout_s)
        written.append(target)
    return written


def _fetch_verified(url: str, target: Path, expected_md5: str, timeout_s: float) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, \
                atomic_path(target) as partial:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(partial, "wb") as handle, tqdm(total=total, unit="B", unit_scale=True,
                                                     desc=target.name, disable=None) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    digest.update(block)
                    handle.write(block)
                    bar.update(len(block))
            if digest.hexdigest() != expected_md5:
                raise DataError(f"{url}: MD5 {digest.hexdigest()} does not match the official "
                                f"{expected_md5}; nothing was written to {target}")
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise DataError(
            f"cannot download {url} ({error}). This machine may be offline: fetch the file "
            f"by hand from {OFFICIAL_BASE_URL} and put it at {target}."
        ) from error
