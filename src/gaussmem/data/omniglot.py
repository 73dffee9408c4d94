"""Omniglot as the one-shot literature uses it: verified, preprocessed once, cached.

`load_omniglot("vinyals", "train")` returns a `ClassImageSet` of 28x28 uint8 images,
strokes = 255, one class per (character, rotation). The first call reads and verifies
the release (timed in results/speed/data_loading.json) and writes a cache of all 1,623
characters keyed by the release's content and the preprocessing; later calls
memory-map that cache.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gaussmem.data.array_cache import CachedArray, load_or_build
from gaussmem.data.class_images import ClassImageSet
from gaussmem.data.datasets import register_dataset
from gaussmem.data.omniglot_source import (
    COLLECTIONS,
    CharacterFiles,
    CollectionSource,
    OmniglotManifest,
    Preprocessing,
    decode_drawing,
    index_collection,
)
from gaussmem.data.omniglot_splits import (
    ROTATIONS,
    SplitClass,
    check_scheme_subset,
    lake_classes,
    vinyals_classes,
)
from gaussmem.errors import DataError
from gaussmem.plumbing.settings import resolve_cache_dir, resolve_data_dir

OMNIGLOT_FOLDER = "omniglot"


def omniglot_dir(data_dir: Path | str | None = None) -> Path:
    """`<data dir>/omniglot`, or a `DataError` saying where it looked and what goes there."""
    root = resolve_data_dir(data_dir)
    folder = root / OMNIGLOT_FOLDER
    if not folder.is_dir():
        raise DataError(
            f"Omniglot not found: {folder} does not exist (data directory {root}, from "
            "--data-dir, else $GAUSSMEM_DATA, else the per-user default). Put the official "
            "images_background.zip and images_evaluation.zip in it, or run "
            "`gaussmem data download omniglot`."
        )
    return folder


def load_omniglot_characters(data_dir: Path | str | None = None,
                             cache_dir: Path | str | None = None,
                             manifest: OmniglotManifest | None = None,
                             preprocessing: Preprocessing | None = None) -> CachedArray:
    """All characters of the release, `(n_characters, 20, size, size)` uint8, cached.

    The metadata holds `characters` (names, release order) and `collections` (which
    collection each came from).
    """
    manifest = manifest or OmniglotManifest.official()
    preprocessing = preprocessing or Preprocessing()
    folder = omniglot_dir(data_dir)
    sources = [CollectionSource(folder, collection) for collection in COLLECTIONS]
    try:
        key_payload = {
            "sources": {source.collection: _fingerprint(source) for source in sources},
            "preprocessing": asdict(preprocessing),
            "manifest": {"alphabets": manifest.alphabets,
                         "samples_per_character": manifest.samples_per_character},
        }
        return load_or_build(resolve_cache_dir(cache_dir), "omniglot", key_payload,
                             lambda: _build(sources, manifest, preprocessing))
    finally:
        for source in sources:
            source.close()


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def _fingerprint(source: CollectionSource) -> str:
    """The source's content fingerprint, hashed once per process per (path, size, mtime):
    loading several subsets should not re-hash the release each time, yet an edited
    release is hashed (and so verified) again."""
    if not source.path.is_file():
        return source.fingerprint()  # a folder's fingerprint is already only stat calls
    stat = source.path.stat()
    memo_key = (str(source.path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _FINGERPRINTS:
        _FINGERPRINTS[memo_key] = source.fingerprint()
    return _FINGERPRINTS[memo_key]


def _build(sources: list[CollectionSource], manifest: OmniglotManifest,
           preprocessing: Preprocessing) -> tuple[np.ndarray, dict]:
    characters: list[tuple[CollectionSource, CharacterFiles]] = [
        (source, character) for source in sources
        for character in index_collection(source, manifest)]
    size = preprocessing.image_size
    images = np.empty((len(characters), manifest.samples_per_character, size, size), np.uint8)
    progress = tqdm(characters, desc="preprocessing Omniglot", unit="char", disable=None)
    for index, (source, character) in enumerate(progress):
        for drawer, member in enumerate(character.members):
            payload = source.read(f"{character.name}/{member.rsplit('/', 1)[1]}")
            images[index, drawer] = decode_drawing(payload, member, source, manifest,
                                                   preprocessing)
    metadata = {"characters": [character.name for _, character in characters],
                "collections": [character.collection for _, character in characters]}
    return images, metadata


@register_dataset("omniglot", image_kind="strokes")
def load_omniglot(scheme: str = "vinyals", subset: str = "train", *,
                  data_dir: Path | str | None = None, cache_dir: Path | str | None = None,
                  split_dir: Path | str | None = None,
                  manifest: OmniglotManifest | None = None,
                  preprocessing: Preprocessing | None = None) -> ClassImageSet:
    """One subset of a split scheme as a `ClassImageSet` (classes in split-file order).

    Args:
        scheme: `"vinyals"` or `"lake"` (see `gaussmem.data.omniglot_splits`).
        subset: `"train"`, `"val"`, `"trainval"` or `"test"` (lake: train/test).
        split_dir: a folder of `<subset>.txt` files replacing the packaged vinyals split.
    """
    check_scheme_subset(scheme, subset)
    cached = load_omniglot_characters(data_dir, cache_dir, manifest, preprocessing)
    names: list[str] = cached.metadata["characters"]
    if scheme == "vinyals":
        classes, origin = vinyals_classes(subset, Path(split_dir) if split_dir else None)
    else:
        collections = cached.metadata["collections"]
        classes = lake_classes(
            subset,
            [n for n, c in zip(names, collections, strict=True) if c == "images_background"],
            [n for n, c in zip(names, collections, strict=True) if c == "images_evaluation"])
        origin = "lake"
    images = rotated_classes(cached.array, names, classes, origin)
    return ClassImageSet(images=images, class_names=[c.name for c in classes],
                         name=f"omniglot/{scheme}/{subset}")


def rotated_classes(character_images: np.ndarray, character_names: list[str],
                    classes: list[SplitClass], origin: str) -> np.ndarray:
    """Gather `(len(classes), samples, size, size)` images, each rotated counter-clockwise
    by its class's rotation (`np.rot90`, as PIL's `rotate` in the reference loaders).

    Unrotated subsets stay a view-free gather; rotated ones are gathered per rotation so
    the work is a few large copies, not one per class.
    """
    index_of = {name: index for index, name in enumerate(character_names)}
    unknown = [c.character for c in classes if c.character not in index_of]
    if unknown:
        raise DataError(f"split {origin} names {len(unknown)} character(s) that the data "
                        f"does not have, e.g. {unknown[0]!r}")
    character_index = np.array([index_of[c.character] for c in classes], dtype=np.int64)
    rotation = np.array([c.rotation for c in classes], dtype=np.int64)
    out = np.empty((len(classes), *character_images.shape[1:]), dtype=character_images.dtype)
    for degrees in ROTATIONS:
        selected = np.flatnonzero(rotation == degrees)
        if selected.size:
            out[selected] = np.rot90(character_images[character_index[selected]],
                                     k=degrees // 90, axes=(-2, -1))
    return out
