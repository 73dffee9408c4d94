"""The writes made to a gallery since its last snapshot, one appended record each.

A server answers an enrollment only once it is on disk. Rewriting the whole gallery for
each one (`gaussmem.gallery_file.write_gallery`) costs as much as the memory is large;
appending one record and flushing it costs as much as the record. So a served gallery
is its last snapshot plus `journal.jsonl` beside it, and every reader
(`gaussmem.recognizer.Recognizer.load`) replays the journal over the snapshot; a new
snapshot (which holds no journal) replaces both at once.

    {"format": "gaussmem-gallery-journal", "version": 1, "snapshot": "<memory sha256>"}
    {"n": 1, "op": "enroll", "labels": [...], "dim": 64, "mean": "<base64>",
     "var": "<base64>", "sha256": "..."}
    {"n": 2, "op": "remove", "label": "...", "sha256": "..."}
    {"n": 3, "op": "calibrate", "score": "...", "threshold": 0.5,
     "calibration": {...}, "sha256": "..."}

The header names the snapshot the records follow (a journal beside another snapshot is
refused). Each record carries the SHA-256 of its other fields, and counts only once its
line is whole: a process killed while appending leaves a torn last line, which readers
skip (that write was never answered). A damaged line before the last, or records out of
sequence, is corruption. Posteriors are stored as the exact float32 the model gave, so
replaying an enrollment repeats the memory's rule on the same numbers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaussmem.errors import GalleryError
from gaussmem.plumbing.atomic import write_bytes_atomic

JOURNAL_NAME = "journal.jsonl"
JOURNAL_FORMAT = "gaussmem-gallery-journal"
JOURNAL_VERSION = 1


@dataclass(frozen=True)
class EnrollRecord:
    """Posteriors `(n, dim)` float32 enrolled under `labels`, in order."""

    labels: tuple[str, ...]
    mean: torch.Tensor
    var: torch.Tensor


@dataclass(frozen=True)
class RemoveRecord:
    label: str


@dataclass(frozen=True)
class CalibrateRecord:
    score: str
    threshold: float
    calibration: dict[str, Any]


JournalRecord = EnrollRecord | RemoveRecord | CalibrateRecord


@dataclass(frozen=True)
class JournalContent:
    """The whole records of a journal, and whether a torn last line followed them."""

    records: list[JournalRecord]
    torn_tail: bool


def read_journal(directory: Path, snapshot_sha256: str, dim: int) -> JournalContent:
    """The records in `directory`'s journal (none when there is no journal); raises
    `GalleryError` naming the file for a journal of another snapshot or a damaged one."""
    path = Path(directory) / JOURNAL_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return JournalContent([], False)
    except OSError as error:
        raise GalleryError(f"{path}: cannot read the gallery's journal ({error})") from error
    lines = data.split(b"\n")
    torn = lines.pop() != b""          # what follows the last newline: empty when whole
    if not lines:
        raise GalleryError(f"{path}: the journal has no header")
    _check_header(path, lines[0], snapshot_sha256)
    records: list[JournalRecord] = []
    for number, line in enumerate(lines[1:], start=1):
        try:
            records.append(_parse_record(line, number, dim))
        except GalleryError as error:
            if number == len(lines) - 1 and not torn:
                # The last whole line may be a write whose flush was cut short.
                return JournalContent(records, True)
            raise GalleryError(f"{path}: record {number}: {error}") from None
    return JournalContent(records, torn)


def start_journal(directory: Path, snapshot_sha256: str) -> None:
    """Write an empty journal (its header) following the snapshot `snapshot_sha256`."""
    header = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION,
              "snapshot": snapshot_sha256}
    write_bytes_atomic(Path(directory) / JOURNAL_NAME, _line(header))


class JournalWriter:
    """Appends records to a journal started by `start_journal`, each flushed to disk
    before `append` returns."""

    def __init__(self, directory: Path, records_so_far: int) -> None:
        self.path = Path(directory) / JOURNAL_NAME
        self.records = records_so_far
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, record: JournalRecord) -> None:
        """Append `record` and flush it. On failure the file is cut back to where it
        was, so a failed append leaves no partial line for the next one to follow."""
        line = _line(_with_checksum({"n": self.records + 1, **_fields(record)}))
        size = os.fstat(self._fd).st_size
        try:
            os.write(self._fd, line)
            os.fsync(self._fd)
        except BaseException:
            os.ftruncate(self._fd, size)
            raise
        self.records += 1

    def close(self) -> None:
        os.close(self._fd)


# --- encoding ---------------------------------------------------------------------------
def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _checksum(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _with_checksum(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "sha256": _checksum(fields)}


def _fields(record: JournalRecord) -> dict[str, Any]:
    if isinstance(record, EnrollRecord):
        mean = record.mean.detach().to(torch.float32).contiguous().numpy()
        var = record.var.detach().to(torch.float32).contiguous().numpy()
        return {"op": "enroll", "labels": list(record.labels), "dim": int(mean.shape[1]),
                "mean": base64.b64encode(mean.astype("<f4").tobytes()).decode(),
                "var": base64.b64encode(var.astype("<f4").tobytes()).decode()}
    if isinstance(record, RemoveRecord):
        return {"op": "remove", "label": record.label}
    return {"op": "calibrate", "score": record.score, "threshold": record.threshold,
            "calibration": record.calibration}


# --- decoding: every field checked before use -------------------------------------------
def _check_header(path: Path, line: bytes, snapshot_sha256: str) -> None:
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise GalleryError(f"{path}: unreadable journal header ({error})") from None
    if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
        raise GalleryError(f"{path}: not a gaussmem gallery journal")
    if header.get("version") != JOURNAL_VERSION:
        raise GalleryError(f"{path}: journal version {header.get('version')!r} is not "
                           f"supported (expected {JOURNAL_VERSION})")
    if header.get("snapshot") != snapshot_sha256:
        raise GalleryError(f"{path}: the journal follows another snapshot of the gallery "
                           "than the memory file beside it (files mixed by hand)")


def _parse_record(line: bytes, number: int, dim: int) -> JournalRecord:
    try:
        document = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise GalleryError(f"unreadable ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("sha256"), str):
        raise GalleryError("not a record")
    fields = {key: value for key, value in document.items() if key != "sha256"}
    if _checksum(fields) != document["sha256"]:
        raise GalleryError("its checksum does not match its content")
    if fields.get("n") != number:
        raise GalleryError(f"numbered {fields.get('n')!r}, expected {number}")
    op = fields.get("op")
    if op == "enroll":
        return _enroll_record(fields, dim)
    if op == "remove":
        label = fields.get("label")
        if not isinstance(label, str) or not label:
            raise GalleryError("remove without a label")
        return RemoveRecord(label)
    if op == "calibrate":
        score, threshold = fields.get("score"), fields.get("threshold")
        calibration = fields.get("calibration")
        if (not isinstance(score, str) or isinstance(threshold, bool)
                or not isinstance(threshold, int | float) or not math.isfinite(threshold)
                or not isinstance(calibration, dict)):
            raise GalleryError("calibrate with a malformed score, threshold or calibration")
        return CalibrateRecord(score, float(threshold), calibration)
    raise GalleryError(f"unknown operation {op!r}")


def _enroll_record(fields: dict[str, Any], dim: int) -> EnrollRecord:
    labels = fields.get("labels")
    if (not isinstance(labels, list) or not labels
            or not all(isinstance(label, str) and label for label in labels)):
        raise GalleryError("enroll without a list of labels")
    if fields.get("dim") != dim:
        raise GalleryError(f"posteriors of dimension {fields.get('dim')!r}, the gallery's "
                           f"is {dim}")
    arrays = []
    for name in ("mean", "var"):
        try:
            raw = base64.b64decode(fields.get(name), validate=True)
        except (TypeError, ValueError) as error:
            raise GalleryError(f"{name} is not base64 ({error})") from None
        if len(raw) != 4 * dim * len(labels):
            raise GalleryError(f"{name} holds {len(raw)} bytes, expected "
                               f"{4 * dim * len(labels)}")
        arrays.append(np.frombuffer(raw, dtype="<f4").reshape(len(labels), dim))
    mean, var = (torch.from_numpy(array.astype(np.float32)) for array in arrays)
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all() and (var > 0).all()):
        raise GalleryError("non-finite mean or non-positive variance")
    return EnrollRecord(tuple(labels), mean, var)
