"""A gallery owned by one server process: reads and writes serialised, every write on
disk before it is reported done.

Images are decoded and encoded outside any lock (the model is read-only), so requests
overlap where they can; recognitions are answered in batches by one thread
(`gaussmem.service.recognize_batches`). A write (enroll, remove, calibrate) changes the
memory, then appends its record to the gallery's journal and flushes it
(`gaussmem.gallery_journal`) before it is answered: a few hundred bytes, not the whole
gallery. Every `COMPACT_EVERY` writes, and when the server opens the gallery, a new
snapshot (`Recognizer.save`: a whole new directory swapped in) replaces snapshot and
journal, so a reader never replays a long journal.

Locks: `_memory_lock` covers only the moments the memory is read or changed (a
recognize never waits for a disk write), `_change_lock` orders the writes and is held
until each is on disk. If a write cannot be made durable, the gallery is reloaded from
disk and the write fails, so the memory never keeps a write the disk does not (a
recognize may see a write while it is being flushed); the next write then starts a new
snapshot rather than append to a journal whose end is in doubt.

Each label has a thumbnail: its first enrolled example as the model sees it
(preprocessed), a PNG in `<gallery>.thumbnails/` beside the gallery (the gallery
directory itself is replaced whole by every snapshot and holds only gallery files).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from PIL import Image

from gaussmem.errors import GalleryError, GaussmemError, ImageError
from gaussmem.gallery_file import MANIFEST_NAME
from gaussmem.gallery_journal import (
    CalibrateRecord,
    EnrollRecord,
    JournalRecord,
    JournalWriter,
    RemoveRecord,
    start_journal,
)
from gaussmem.plumbing.atomic import write_bytes_atomic
from gaussmem.preprocess import Polarity, prepare_image
from gaussmem.recognizer import EnrollReport, Recognition, Recognizer, check_labels
from gaussmem.service.recognize_batches import RecognizeBatches
from gaussmem.service.uploads import Upload, decode_upload
from gaussmem.unknown import Calibration

T = TypeVar("T")

#: Journal records after which a write starts a new snapshot: replaying the journal
#: (at every load) stays short, and the snapshot's cost is spread over as many writes.
COMPACT_EVERY = 256

class UnknownLabelError(GalleryError):
    """A label that is not in the gallery."""


class SaveFailedError(GaussmemError):
    """A write that was undone because the gallery could not be saved."""


class ServedGallery:
    """The recognizer of a gallery directory, shared by a server's request threads."""

    def __init__(self, recognizer: Recognizer, directory: Path) -> None:
        self.recognizer = recognizer
        self.directory = Path(directory)
        self.thumbnails = self.directory.with_name(self.directory.name + ".thumbnails")
        self._memory_lock = threading.Lock()
        self._change_lock = threading.Lock()
        self._journal: JournalWriter | None = None   # None: the next write snapshots
        self._batches = RecognizeBatches(lambda: self.recognizer, self._memory_lock)

    @classmethod
    def open(cls, directory: Path, checkpoint: Path | None = None,
             polarity: Polarity = "auto") -> ServedGallery:
        """The gallery in `directory` (a new one over `checkpoint` when the directory
        holds none), written as a fresh snapshot with an empty journal, so a bad
        directory is refused before serving and a journal left by a killed server is
        folded in."""
        directory = Path(directory)
        _remove_interrupted_saves(directory)
        if (directory / MANIFEST_NAME).is_file():
            recognizer = Recognizer.load(directory, checkpoint=checkpoint, polarity=polarity)
        elif checkpoint is None:
            raise GalleryError(f"{directory} is a new gallery: give the MA-VAE --checkpoint "
                               "to serve it with")
        else:
            recognizer = Recognizer.from_checkpoint(checkpoint, polarity=polarity)
        gallery = cls(recognizer, directory)
        gallery._snapshot()
        return gallery

    # --- reads ------------------------------------------------------------------------
    def labels(self) -> dict[str, int]:
        with self._memory_lock:
            return self.recognizer.labels()

    def thumbnail(self, label: str) -> bytes:
        """The PNG thumbnail of `label`; `UnknownLabelError` if it has none."""
        with self._memory_lock:
            if label not in self.recognizer:
                raise UnknownLabelError(f"label {label!r} is not in the gallery")
        try:
            return self._thumbnail_path(label).read_bytes()
        except FileNotFoundError:
            raise UnknownLabelError(f"label {label!r} has no thumbnail") from None

    def label_count(self) -> int:
        with self._memory_lock:
            return self.recognizer.label_count()

    def examples_of(self, label: str) -> int:
        with self._memory_lock:
            return self.recognizer.examples_of(label)

    def submit_recognize(self, upload: Upload, k: int, threshold: float | None
                         ) -> Future[Recognition]:
        """Queue a recognition (answered in a batch with those queued beside it, see
        `gaussmem.service.recognize_batches`); the future holds the result."""
        return self._batches.submit(upload, k, threshold)

    def close(self) -> None:
        """Stop the recognition thread once what is queued is answered; close the
        journal."""
        self._batches.close()
        with self._change_lock:
            self._close_journal()

    # --- writes -----------------------------------------------------------------------
    def enroll(self, label: str, uploads: Sequence[Upload]) -> EnrollReport:
        """Enroll every upload as an example of `label`, or none of them."""
        check_labels([label])
        if not uploads:
            raise ImageError("no images given")
        images = [decode_upload(upload) for upload in uploads]
        mu, var = self.recognizer.encode(images)

        def change() -> EnrollReport:
            if label not in self.recognizer:
                self._write_thumbnail(label, images[0])
            with self._memory_lock:
                return self.recognizer.enroll_encoded([label] * len(images), mu, var)

        return self._write(change, lambda _: EnrollRecord((label,) * len(images), mu, var))

    def remove(self, label: str) -> int:
        """Forget `label`; returns how many memory entries it had."""
        def change() -> int:
            with self._memory_lock:
                if label not in self.recognizer:
                    raise UnknownLabelError(f"label {label!r} is not in the gallery")
                return self.recognizer.remove(label)

        entries = self._write(change, lambda _: RemoveRecord(label))
        self._thumbnail_path(label).unlink(missing_ok=True)
        return entries

    def calibrate(self, known: Sequence[Upload], known_labels: Sequence[str],
                  unknown: Sequence[Upload], target_far: float,
                  score: str | None) -> Calibration:
        """`Recognizer.calibrate` on uploads, stored in the gallery."""
        if len(known) != len(known_labels):
            raise GalleryError(f"{len(known_labels)} known_labels for {len(known)} known "
                               "images: give one label per image, in order")
        if not known or not unknown:
            raise ImageError("calibrate needs at least one known and one unknown image")
        known_images = [decode_upload(upload) for upload in known]
        unknown_images = [decode_upload(upload) for upload in unknown]

        def change() -> Calibration:
            with self._memory_lock:
                return self.recognizer.calibrate(known_images, known_labels, unknown_images,
                                                 target_far, score=score)

        return self._write(change, lambda calibration: CalibrateRecord(
            calibration.score, calibration.threshold, asdict(calibration)))

    def _write(self, change: Callable[[], T],
               record: Callable[[T], JournalRecord]) -> T:
        """Run `change` (which raises before changing anything, or changes the memory
        under `_memory_lock`), then return once its `record` is on disk."""
        with self._change_lock:
            result = change()
            try:
                if self._journal is None or self._journal.records >= COMPACT_EVERY:
                    self._snapshot()         # holds this write too
                else:
                    self._journal.append(record(result))
            except BaseException as error:
                self._close_journal()
                self._reload()
                if not isinstance(error, Exception):
                    raise                    # Ctrl-C and exits stay what they are
                raise SaveFailedError(f"saving {self.directory} failed ({error}), so this "
                                      "write was undone; try again") from error
            return result

    def _snapshot(self) -> None:
        """Write the whole gallery and start an empty journal after it."""
        self._close_journal()
        snapshot_sha256 = self.recognizer.save(self.directory)
        # The snapshot holds every write: without a journal after it, the next write
        # snapshots again.
        with contextlib.suppress(OSError):
            start_journal(self.directory, snapshot_sha256)
            self._journal = JournalWriter(self.directory, 0)

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def _reload(self) -> None:
        """Back to the gallery on disk (the last write that was saved whole)."""
        recognizer = Recognizer.load(self.directory, checkpoint=self.recognizer.checkpoint_path,
                                     polarity=self.recognizer.polarity)
        with self._memory_lock:
            self.recognizer = recognizer

    def _thumbnail_path(self, label: str) -> Path:
        # Labels are any printable text ("a/b", "..", "ä"): the file is named by a hash.
        return self.thumbnails / (hashlib.sha256(label.encode()).hexdigest()[:32] + ".png")

    def _write_thumbnail(self, label: str, image: Image.Image) -> None:
        pixels = prepare_image(image, self.recognizer.preprocessing, self.recognizer.polarity)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, format="PNG")
        write_bytes_atomic(self._thumbnail_path(label), buffer.getvalue())


def _remove_interrupted_saves(directory: Path) -> None:
    """Delete the staging and stale copies a killed save leaves beside the gallery
    (`gaussmem.plumbing.atomic.atomic_directory` names them `.<name>.*.tmp` and `.<name>.*.old`):
    they are never read, and a server killed often would pile them up. The server owns
    the gallery, so no other save can be using them."""
    if not directory.parent.is_dir():
        return
    for pattern in (f".{directory.name}.*.tmp", f".{directory.name}.*.old"):
        for leftover in directory.parent.glob(pattern):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
