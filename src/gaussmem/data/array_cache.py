"""An on-disk cache of one preprocessed uint8 array, keyed by source content and parameters.

Layout: `<cache_dir>/<namespace>/<key>/{images.npy, meta.json}`, where `key` hashes the
source fingerprint and every preprocessing parameter, so a change of either lands in a
new directory. The directory is built in a temporary sibling and renamed into place, so a
reader never sees half a cache. A cache is trusted only after its metadata matches the
request and the SHA-256 of the array and of the build metadata match the ones recorded
at build time; anything else (truncated file, other parameters, hand-edited metadata, a
cache from before the metadata checksum) is rebuilt, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tokenize
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gaussmem.errors import CacheError
from gaussmem.plumbing.atomic import atomic_directory

CACHE_FORMAT = 1
_ARRAY_FILE = "images.npy"
_META_FILE = "meta.json"
logger = logging.getLogger(__name__)
#: What `np.load` raises on a damaged .npy: besides OSError and ValueError, a mangled
#: header dict escapes from Python's parser (SyntaxError, TokenError) and a short file
#: from its reader (EOFError), and a file that starts like a zip is read as an .npz
#: archive (BadZipFile).
_UNREADABLE_NPY = (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError,
                   zipfile.BadZipFile)


@dataclass(frozen=True)
class CachedArray:
    """A memory-mapped cached array, its build metadata, and how it was obtained.

    `status` is `"hit"` (read from disk), `"built"` (no cache existed) or
    `"rebuilt: <reason>"` (a cache existed but could not be trusted).
    """

    array: np.ndarray
    metadata: dict[str, Any]
    directory: Path
    status: str


def cache_key(key_payload: dict[str, Any]) -> str:
    """A short stable digest of everything the cached content depends on."""
    canonical = json.dumps({"format": CACHE_FORMAT, **key_payload}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def load_or_build(cache_dir: Path, namespace: str, key_payload: dict[str, Any],
                  build: Callable[[], tuple[np.ndarray, dict[str, Any]]]) -> CachedArray:
    """Return the cached array for `key_payload`, building it with `build()` if needed.

    `build` returns the array and JSON-serialisable metadata to keep beside it.
    Raises `CacheError` when the cache directory cannot be created or written.
    """
    directory = cache_dir / namespace / cache_key(key_payload)
    reason = _why_untrusted(directory, key_payload)
    if reason is None:
        array = np.load(directory / _ARRAY_FILE, mmap_mode="r")
        metadata = json.loads((directory / _META_FILE).read_text())["metadata"]
        return CachedArray(array, metadata, directory, "hit")
    if reason != "absent":
        logger.warning("cache %s cannot be trusted (%s); rebuilding it", directory, reason)
    array, metadata = build()
    _write(directory, key_payload, np.ascontiguousarray(array), metadata)
    status = "built" if reason == "absent" else f"rebuilt: {reason}"
    return CachedArray(np.load(directory / _ARRAY_FILE, mmap_mode="r"), metadata, directory,
                       status)


def _why_untrusted(directory: Path, key_payload: dict[str, Any]) -> str | None:
    """None when the cache at `directory` is complete and matches; else the reason."""
    meta_path = directory / _META_FILE
    array_path = directory / _ARRAY_FILE
    if not directory.exists():
        return "absent"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError) as error:
        return f"unreadable {meta_path.name}: {error}"
    if not isinstance(meta, dict):
        return f"{meta_path.name} is not a JSON object"
    if meta.get("format") != CACHE_FORMAT or meta.get("key_payload") != key_payload:
        return "built from other source data or parameters"
    if _json_sha256(meta.get("metadata")) != meta.get("metadata_sha256"):
        return f"{meta_path.name}'s build metadata does not match its recorded checksum"
    try:
        array = np.load(array_path, mmap_mode="r")
    except _UNREADABLE_NPY as error:
        return f"unreadable {array_path.name}: {error}"
    if list(array.shape) != meta.get("shape") or str(array.dtype) != meta.get("dtype"):
        return f"{array_path.name} has shape {array.shape} {array.dtype}, metadata says otherwise"
    if _sha256(array_path) != meta.get("sha256"):
        return f"{array_path.name} does not match its recorded checksum"
    return None


def _write(directory: Path, key_payload: dict[str, Any], array: np.ndarray,
           metadata: dict[str, Any]) -> None:
    try:
        with atomic_directory(directory) as staging:
            np.save(staging / _ARRAY_FILE, array)
            meta = {"format": CACHE_FORMAT, "key_payload": key_payload,
                    "shape": list(array.shape), "dtype": str(array.dtype),
                    "sha256": _sha256(staging / _ARRAY_FILE), "metadata": metadata,
                    "metadata_sha256": _json_sha256(metadata)}
            (staging / _META_FILE).write_text(json.dumps(meta, indent=1))
    except OSError as error:
        raise CacheError(
            f"cannot write the cache under {directory.parent} ({error}). Point "
            "--cache-dir or $GAUSSMEM_CACHE at a writable directory."
        ) from error


def _json_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
