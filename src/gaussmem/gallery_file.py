"""A recognizer's gallery on disk: a directory holding a manifest and a memory file.

    <gallery>/gallery.json          format, version, the checkpoint (path, SHA-256,
                                    content_dim, method), preprocessing, label names ->
                                    memory labels, the unknown score and threshold, and
                                    the memory file's SHA-256
    <gallery>/memory.safetensors    the `GaussianMemory` (gaussmem.memory_file checks it)
    <gallery>/journal.jsonl         optional: writes made since this snapshot, replayed
                                    over it by readers (gaussmem.gallery_journal)

The directory is written whole and swapped into place (`gaussmem.plumbing.atomic`), so a reader
sees the old gallery or the new one, never a manifest of one and the memory of the
other; the memory's hash in the manifest catches files mixed by hand. Nothing read here
runs code: JSON and safetensors only, every field checked before use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gaussmem.checkpoint import file_sha256
from gaussmem.errors import GalleryError, MemoryFileError
from gaussmem.gallery_journal import JournalContent, read_journal
from gaussmem.memory import GaussianMemory
from gaussmem.plumbing.atomic import atomic_directory
from gaussmem.preprocess import KINDS
from gaussmem.unknown import UNKNOWN_SCORES

GALLERY_FORMAT = "gaussmem-gallery"
#: Version 2 may hold a journal, which a version-1 reader would silently ignore.
GALLERY_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "gallery.json"
MEMORY_NAME = "memory.safetensors"


@dataclass
class GalleryManifest:
    """The manifest's content; `labels` maps each label name to its memory label."""

    checkpoint_path: str
    checkpoint_sha256: str
    content_dim: int
    method: str
    preprocessing_kind: str
    image_size: int
    labels: dict[str, int]
    next_label_id: int
    unknown_score: str
    threshold: float | None
    calibration: dict[str, Any] | None

    def to_json(self, memory_sha256: str) -> dict[str, Any]:
        return {
            "format": GALLERY_FORMAT, "version": GALLERY_VERSION,
            "checkpoint": {"path": self.checkpoint_path, "sha256": self.checkpoint_sha256,
                           "content_dim": self.content_dim, "method": self.method},
            "preprocessing": {"kind": self.preprocessing_kind, "image_size": self.image_size},
            "labels": self.labels, "next_label_id": self.next_label_id,
            "unknown": {"score": self.unknown_score, "threshold": self.threshold,
                        "calibration": self.calibration},
            "memory": {"file": MEMORY_NAME, "sha256": memory_sha256},
        }


def write_gallery(directory: str | Path, manifest: GalleryManifest,
                  memory: GaussianMemory) -> str:
    """Write the gallery atomically, replacing a gallery already there (its journal
    too: the new snapshot holds every write); refuses to replace a directory that holds
    anything but a gallery (it could be the user's images). Returns the memory file's
    SHA-256, which a journal started after it names."""
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise GalleryError(f"{directory} is a file, not a gallery directory")
        if any(directory.iterdir()) and not (directory / MANIFEST_NAME).is_file():
            raise GalleryError(f"{directory} is a non-empty directory without "
                               f"{MANIFEST_NAME}; choose a new or empty directory")
    with atomic_directory(directory) as staging:
        memory.save(staging / MEMORY_NAME)
        memory_sha256 = file_sha256(staging / MEMORY_NAME)
        # One line: an indented dump takes Python's slow encoder, which dominated a save of
        # 10,000 labels.
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(memory_sha256))
                                             + "\n")
    return memory_sha256


def read_gallery(directory: str | Path
                 ) -> tuple[GalleryManifest, GaussianMemory, JournalContent]:
    """Read and check a gallery: its snapshot and the journal of writes since, to be
    replayed over it in order; raises `GalleryError` naming the file and the problem."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise GalleryError(f"{directory} is not a gallery (no {MANIFEST_NAME}); create one "
                           "with `gaussmem enroll --gallery DIR --checkpoint C ...`")
    try:
        document = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise GalleryError(f"{manifest_path}: not a readable gallery manifest ({error})"
                           ) from error
    manifest, memory_sha256 = _parse(manifest_path, document)
    memory_path = directory / MEMORY_NAME
    if not memory_path.is_file():
        raise GalleryError(f"{memory_path}: the gallery's memory file is missing")
    if file_sha256(memory_path) != memory_sha256:
        raise GalleryError(f"{memory_path}: does not match the SHA-256 in {manifest_path} "
                           "(changed or copied from another gallery)")
    try:
        memory = GaussianMemory.load(memory_path)
    except MemoryFileError as error:
        raise GalleryError(str(error)) from error
    if memory.dim != manifest.content_dim:
        raise GalleryError(f"{memory_path}: entries are {memory.dim}-d but the manifest's "
                           f"checkpoint has content_dim {manifest.content_dim}")
    stored = set(memory.labels[memory.valid].tolist())
    unnamed = stored - set(manifest.labels.values())
    if unnamed:
        raise GalleryError(f"{memory_path}: entries carry label ids {sorted(unnamed)[:3]} "
                           f"that {manifest_path} does not name")
    return manifest, memory, read_journal(directory, memory_sha256, manifest.content_dim)


def _parse(path: Path, document: Any) -> tuple[GalleryManifest, str]:
    """The manifest's fields, each checked for type and range."""
    def fail(problem: str) -> GalleryError:
        return GalleryError(f"{path}: {problem}")

    def field(container: Any, key: str, kind: type | tuple[type, ...]) -> Any:
        if not isinstance(container, dict) or key not in container:
            raise fail(f"missing field {key!r}")
        value = container[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise fail(f"field {key!r} is {value!r}, not a {kind}")
        return value

    if not isinstance(document, dict) or document.get("format") != GALLERY_FORMAT:
        raise fail(f"not a gaussmem gallery manifest (format is not {GALLERY_FORMAT!r})")
    if document.get("version") not in READABLE_VERSIONS:
        raise fail(f"gallery version {document.get('version')!r} is not supported "
                   f"(this gaussmem reads {READABLE_VERSIONS})")
    checkpoint = field(document, "checkpoint", dict)
    preprocessing = field(document, "preprocessing", dict)
    unknown = field(document, "unknown", dict)
    memory = field(document, "memory", dict)
    labels = field(document, "labels", dict)
    next_label_id = field(document, "next_label_id", int)
    if not all(isinstance(name, str) and name and isinstance(value, int)
               and not isinstance(value, bool) and 0 <= value < next_label_id
               for name, value in labels.items()):
        raise fail(f"labels must map names to ids in [0, {next_label_id})")
    if len(set(labels.values())) != len(labels):
        raise fail("two label names share one id")
    score = field(unknown, "score", str)
    if score not in UNKNOWN_SCORES:
        raise fail(f"unknown score {score!r} is not one of {UNKNOWN_SCORES}")
    threshold = unknown.get("threshold")
    if threshold is not None and (isinstance(threshold, bool)
                                  or not isinstance(threshold, int | float)
                                  or not math.isfinite(threshold)):
        raise fail(f"threshold {threshold!r} is not a finite number or null")
    calibration = unknown.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        raise fail("calibration is not an object or null")
    kind = field(preprocessing, "kind", str)
    if kind not in KINDS:
        raise fail(f"preprocessing kind {kind!r} is not one of {KINDS}")
    image_size = field(preprocessing, "image_size", int)
    content_dim = field(checkpoint, "content_dim", int)
    if image_size < 1 or content_dim < 1 or next_label_id < 0:
        raise fail("image_size, content_dim and next_label_id must be positive")
    if field(memory, "file", str) != MEMORY_NAME:
        raise fail(f"memory file must be {MEMORY_NAME!r}")
    manifest = GalleryManifest(
        checkpoint_path=field(checkpoint, "path", str),
        checkpoint_sha256=field(checkpoint, "sha256", str),
        content_dim=content_dim, method=field(checkpoint, "method", str),
        preprocessing_kind=kind, image_size=image_size, labels=dict(labels),
        next_label_id=next_label_id, unknown_score=score,
        threshold=None if threshold is None else float(threshold), calibration=calibration)
    return manifest, field(memory, "sha256", str)

