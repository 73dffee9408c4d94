"""The gallery journal: records read back exactly, a torn last line skipped, damage and
mixing refused, a failed append leaving nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gaussmem.errors import GalleryError
from gaussmem.gallery_journal import (
    JOURNAL_NAME,
    CalibrateRecord,
    EnrollRecord,
    JournalWriter,
    RemoveRecord,
    read_journal,
    start_journal,
)

DIM = 6
SNAPSHOT = "a" * 64


def enroll_record(labels: tuple[str, ...], seed: int) -> EnrollRecord:
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(len(labels), DIM, generator=generator)
    var = torch.rand(len(labels), DIM, generator=generator) + 1e-3
    return EnrollRecord(labels, mean, var)


def written_journal(directory: Path) -> list[object]:
    start_journal(directory, SNAPSHOT)
    records = [enroll_record(("alice", "bob"), 0), RemoveRecord("bob"),
               CalibrateRecord("similarity", 0.25, {"score": "similarity"}),
               enroll_record(("ä/ö",), 1)]
    writer = JournalWriter(directory, 0)
    for record in records:
        writer.append(record)
    writer.close()
    return records


def assert_same(read: object, written: object) -> None:
    if isinstance(written, EnrollRecord):
        assert isinstance(read, EnrollRecord) and read.labels == written.labels
        assert torch.equal(read.mean, written.mean) and torch.equal(read.var, written.var)
    else:
        assert read == written


def test_records_read_back_exactly(tmp_path: Path) -> None:
    written = written_journal(tmp_path)
    content = read_journal(tmp_path, SNAPSHOT, DIM)
    assert not content.torn_tail and len(content.records) == len(written)
    for read, record in zip(content.records, written, strict=True):
        assert_same(read, record)


def test_no_journal_is_no_records(tmp_path: Path) -> None:
    content = read_journal(tmp_path, SNAPSHOT, DIM)
    assert content.records == [] and not content.torn_tail


@pytest.mark.parametrize("tail", [b'{"n": 5, "op": "rem', b'{"n":5,"op":"remove"}\n'])
def test_a_torn_last_line_is_skipped(tmp_path: Path, tail: bytes) -> None:
    """Cut mid-line (no newline), or whole but without its checksum: an unanswered write."""
    written = written_journal(tmp_path)
    with open(tmp_path / JOURNAL_NAME, "ab") as journal:
        journal.write(tail)
    content = read_journal(tmp_path, SNAPSHOT, DIM)
    assert content.torn_tail and len(content.records) == len(written)


def test_a_damaged_record_before_the_last_is_refused(tmp_path: Path) -> None:
    written_journal(tmp_path)
    path = tmp_path / JOURNAL_NAME
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"bob"', b'"eve"')       # record 2: checksum mismatch
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(GalleryError, match=rf"{JOURNAL_NAME}: record 2: its checksum"):
        read_journal(tmp_path, SNAPSHOT, DIM)


def test_records_out_of_sequence_are_refused(tmp_path: Path) -> None:
    written_journal(tmp_path)
    path = tmp_path / JOURNAL_NAME
    lines = path.read_bytes().split(b"\n")
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(GalleryError, match="record 1: numbered 2, expected 1"):
        read_journal(tmp_path, SNAPSHOT, DIM)


def test_a_journal_of_another_snapshot_or_dimension_is_refused(tmp_path: Path) -> None:
    written_journal(tmp_path)
    with pytest.raises(GalleryError, match="follows another snapshot"):
        read_journal(tmp_path, "b" * 64, DIM)
    with pytest.raises(GalleryError, match="record 1: posteriors of dimension 6"):
        read_journal(tmp_path, SNAPSHOT, DIM + 1)


def test_a_failed_append_leaves_the_journal_as_it_was(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    written_journal(tmp_path)
    before = (tmp_path / JOURNAL_NAME).read_bytes()
    writer = JournalWriter(tmp_path, 4)

    def failing_fsync(_: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        writer.append(RemoveRecord("alice"))
    monkeypatch.undo()
    assert (tmp_path / JOURNAL_NAME).read_bytes() == before
    writer.append(RemoveRecord("alice"))                 # the next one follows cleanly
    writer.close()
    content = read_journal(tmp_path, SNAPSHOT, DIM)
    assert not content.torn_tail and content.records[-1] == RemoveRecord("alice")
