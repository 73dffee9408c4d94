"""Uploaded files as the service receives them, and their decoding into images."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from gaussmem.errors import ImageError

#: Largest decoded image accepted, in pixels: a small compressed file can expand to
#: gigabytes (a "decompression bomb"), and no model input needs more than this.
MAX_IMAGE_PIXELS = 4096 * 4096

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

