"""A gallery owned by one server process: reads and writes serialised, every write on
disk before it is reported done.

Images are decoded and encoded outside any lock (the model is read-only), so requests
overlap where they can. A write (enroll, remove, calibrate) changes the memory, then
waits until a save that includes it has finished (`Recognizer.save`: a whole new
directory swapped in) before it is answered. Saves are group commits: writes that
arrive while a save runs wait, change the memory one after another, and one save
then covers them all, so a burst of enrollments costs a few saves, not one each.
Locks: `_memory_lock` covers only the moments the memory is read or changed (a
recognize never waits for a save), `_change_lock` orders the changes and is held
through a save so the saved state is whole, `_save_lock` runs one save at a time. If a
save fails, the gallery is reloaded from disk and every write it covered fails, so the
memory never keeps a write the disk does not (a recognize may see a write while it is
being saved).

Each label has a thumbnail: its first enrolled example as the model sees it
(preprocessed), a PNG in `<gallery>.thumbnails/` beside the gallery (the gallery
directory itself is replaced whole on every save and holds only gallery files).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from gaussmem.errors import GalleryError, GaussmemError, ImageError
from gaussmem.gallery_file import MANIFEST_NAME
from gaussmem.plumbing.atomic import write_bytes_atomic
from gaussmem.preprocess import Polarity, prepare_image
from gaussmem.recognizer import EnrollReport, Recognition, Recognizer, check_labels
from gaussmem.unknown import Calibration

T = TypeVar("T")

#: Largest decoded image accepted, in pixels: a small compressed file can expand to
#: gigabytes (a "decompression bomb"), and no model input needs more than this.
MAX_IMAGE_PIXELS = 4096 * 4096


class UnknownLabelError(GalleryError):
    """A label that is not in the gallery."""


class SaveFailedError(GaussmemError):
    """A write that was undone because the gallery could not be saved."""


@dataclass(frozen=True)
class Upload:
    """An uploaded file: the name the client gave it (for error messages) and its bytes."""

    name: str
    data: bytes


def decode_upload(upload: Upload) -> Image.Image:
    """The upload as a PIL image; `ImageError` naming it when it is not an image."""
    if not upload.data:
        raise ImageError(f"{upload.name}: empty file, not an image")
    try:
        image = Image.open(io.BytesIO(upload.data))
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageError(f"{upload.name}: {width}x{height} pixels is more than the "
                             f"{MAX_IMAGE_PIXELS} accepted")
        image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ImageError(f"{upload.name}: not a readable image ({reason})") from error
    return image


class ServedGallery:
    """The recognizer of a gallery directory, shared by a server's request threads."""

    def __init__(self, recognizer: Recognizer, directory: Path) -> None:
        self.recognizer = recognizer
        self.directory = Path(directory)
        self.thumbnails = self.directory.with_name(self.directory.name + ".thumbnails")
        self._memory_lock = threading.Lock()
        self._change_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._changes = 0         # writes applied to the memory, numbered from 1
        self._saved = 0           # writes 1.._saved are on disk
        self._lost = 0            # writes 1.._lost were dropped by a failed save

    @classmethod
    def open(cls, directory: Path, checkpoint: Path | None = None,
             polarity: Polarity = "auto") -> ServedGallery:
        """The gallery in `directory`; a new one over `checkpoint`, saved at once, when
        the directory holds none (so a bad directory is refused before serving)."""
        directory = Path(directory)
        _remove_interrupted_saves(directory)
        if (directory / MANIFEST_NAME).is_file():
            recognizer = Recognizer.load(directory, checkpoint=checkpoint, polarity=polarity)
        elif checkpoint is None:
            raise GalleryError(f"{directory} is a new gallery: give the MA-VAE --checkpoint "
                               "to serve it with")
        else:
            recognizer = Recognizer.from_checkpoint(checkpoint, polarity=polarity)
            recognizer.save(directory)
        return cls(recognizer, directory)

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

    def recognize(self, upload: Upload, k: int, threshold: float | None) -> Recognition:
        mu, var = self.recognizer.encode([decode_upload(upload)])
        with self._memory_lock:
            return self.recognizer.recognize_encoded(mu, var, k=k, threshold=threshold)[0]

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

        return self._write(change)

    def remove(self, label: str) -> int:
        """Forget `label`; returns how many memory entries it had."""
        def change() -> int:
            with self._memory_lock:
                if label not in self.recognizer:
                    raise UnknownLabelError(f"label {label!r} is not in the gallery")
                return self.recognizer.remove(label)

        entries = self._write(change)
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

        return self._write(change)

    def _write(self, change: Callable[[], T]) -> T:
        """Run `change` (which raises before changing anything, or changes the memory
        under `_memory_lock`), then return once a save holds it."""
        with self._change_lock:
            result = change()
            self._changes += 1
            number = self._changes
        self._save_through(number)
        return result

    def _save_through(self, number: int) -> None:
        """Return when write `number` is on disk; raise if a failed save dropped it."""
        with self._save_lock:
            if self._saved >= number:
                return                       # a later writer's save covered it
            if self._lost >= number:
                raise SaveFailedError(f"saving {self.directory} failed, so this write was "
                                      "undone; try again")
            with self._change_lock:
                through = self._changes
                try:
                    self.recognizer.save(self.directory)
                except BaseException as error:
                    self._lost = through
                    self._reload()
                    if not isinstance(error, Exception):
                        raise                # Ctrl-C and exits stay what they are
                    raise SaveFailedError(f"saving {self.directory} failed ({error}), so "
                                          "this write was undone; try again") from error
                self._saved = through

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
