"""A compact, verifiable pack of LFW-a's preprocessed faces, for machines without the
archive.

The LFW-a archive is 97 MB; a GPU machine that receives only a small copy of the
working tree (or one without the archive's licence terms) can instead get the
preprocessed uint8 faces of the people the presets use (~40 MB for the 423 people with
at least 5 photos at 84x84). `write_face_pack` stores them with everything needed to
trust them: the preprocessing, the minimum photo count, every person's photo count in
the full archive, the archive's SHA-256 and the SHA-256 of the pixels.
`gaussmem.data.lfw` reads `<data dir>/lfw/lfwa-faces.npz` when the archive is absent, so
such a pack gives exactly the arrays (and the same cache key) the archive would.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gaussmem.errors import DataError
from gaussmem.plumbing.atomic import atomic_path
from gaussmem.plumbing.settings import LFW_PACK_NAME

PACK_NAME = LFW_PACK_NAME  # the name the rest of the data package uses
_FORMAT = 1


def pixels_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def write_face_pack(path: Path, images: np.ndarray, *, people: list[str],
                    counts: list[int], all_counts: dict[str, int], min_images: int,
                    preprocessing: dict[str, Any], source_fingerprint: str) -> Path:
    """Write the pack atomically (temp file, then rename); returns `path`."""
    meta = {"format": _FORMAT, "people": people, "counts": counts, "all_counts": all_counts,
            "min_images": min_images, "preprocessing": preprocessing,
            "source_sha256": source_fingerprint, "pixels_sha256": pixels_sha256(images)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, images=np.ascontiguousarray(images),
                            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return path


def read_face_pack_meta(path: Path) -> dict[str, Any]:
    """The pack's metadata (cheap: the pixels are not read)."""
    try:
        with np.load(path) as pack:
            return json.loads(pack["meta"].tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path} is not a readable LFW-a face pack ({error}); make it again "
                        "with `gaussmem data pack-lfw`") from error


def read_face_pack(path: Path, min_images: int, preprocessing: dict[str, Any]
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """`(images, metadata)` of a pack made with the same `min_images` and
    `preprocessing`, its pixels checked against their recorded SHA-256."""
    meta = read_face_pack_meta(path)
    if meta.get("format") != _FORMAT:
        raise DataError(f"{path}: pack format {meta.get('format')!r}, expected {_FORMAT}")
    wanted = {"min_images": min_images, "preprocessing": preprocessing}
    found = {key: meta.get(key) for key in wanted}
    if found != wanted:
        raise DataError(f"{path} holds faces made with {found}, but {wanted} was asked for; "
                        "pack the faces again with these settings")
    try:
        with np.load(path) as pack:
            images = pack["images"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: cannot read its pixels ({error})") from error
    if pixels_sha256(images) != meta["pixels_sha256"]:
        raise DataError(f"{path}: pixels do not match their recorded SHA-256 (corrupt copy)")
    if len(images) != sum(meta["counts"]):
        raise DataError(f"{path}: {len(images)} images for {sum(meta['counts'])} photos")
    return images, {"people": meta["people"], "counts": meta["counts"]}
