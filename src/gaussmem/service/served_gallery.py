"""A gallery owned by one server process: reads and writes serialised, every write on
disk before it is reported done.

Images are decoded and encoded outside any lock (the model is read-only), so requests
overlap where they can. Two locks: `_write_lock` serialises writes from the change of
the memory to the end of its save, and `_memory_lock` covers only the moments the
memory is read or changed, so a recognize waits for a write's few milliseconds of
memory update, not for its save (while one write saves, no other can change the memory
it is reading). A write is saved with `Recognizer.save` (a whole new directory swapped
in) before the caller hears of it (a recognize may see a write while it is being
saved); if the save fails, the gallery is reloaded from disk, so the memory never keeps
a write the disk does not.

Each label has a thumbnail: its first enrolled example as the model sees it
(preprocessed), a PNG in `<gallery>.thumbnails/` beside the gallery (the gallery
directory itself is replaced whole on every save and holds only gallery files).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from gaussmem.atomic import write_bytes_atomic
from gaussmem.gallery_file import MANIFEST_NAME, GalleryError
from gaussmem.preprocess import ImageError, Polarity, prepare_image
from gaussmem.recognizer import EnrollReport, Recognition, Recognizer, check_labels
from gaussmem.unknown import Calibration

#: Largest decoded image accepted, in pixels: a small compressed file can expand to
#: gigabytes (a "decompression bomb"), and no model input needs more than this.
MAX_IMAGE_PIXELS = 4096 * 4096


class UnknownLabelError(GalleryError):
    """A label that is not in the gallery."""


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
        self._write_lock = threading.Lock()
        self._memory_lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path, checkpoint: Path | None = None,
             polarity: Polarity = "auto") -> ServedGallery:
        """The gallery in `directory`; a new one over `checkpoint`, saved at once, when
        the directory holds none (so a bad directory is refused before serving)."""
        directory = Path(directory)
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
        with self._write_lock:
            is_new = label not in self.recognizer
            with self._memory_lock:
                report = self.recognizer.enroll_encoded([label] * len(images), mu, var)
            with self._rollback_on_error():
                if is_new:
                    self._write_thumbnail(label, images[0])
                self.recognizer.save(self.directory)
        return report

    def remove(self, label: str) -> int:
        """Forget `label`; returns how many memory entries it had."""
        with self._write_lock:
            if label not in self.recognizer:
                raise UnknownLabelError(f"label {label!r} is not in the gallery")
            with self._rollback_on_error():
                with self._memory_lock:
                    entries = self.recognizer.remove(label)
                self.recognizer.save(self.directory)
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
        with self._write_lock:
            with self._memory_lock:
                calibration = self.recognizer.calibrate(known_images, known_labels,
                                                        unknown_images, target_far, score=score)
            with self._rollback_on_error():
                self.recognizer.save(self.directory)
        return calibration

    # --- helpers ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _rollback_on_error(self) -> Iterator[None]:
        """A block whose failure, whatever it is, reloads the gallery from disk, so the
        memory answered from and the disk never disagree; the error still propagates."""
        try:
            yield
        except BaseException:
            self._reload()
            raise

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

