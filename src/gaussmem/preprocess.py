"""Images as users have them -> the model inputs a checkpoint was trained on.

Training images were made by the dataset loaders (`gaussmem.data.omniglot_source`,
`gaussmem.data.lfw`): grey, Pillow bilinear resize (antialiased when shrinking) to the
model's square size, then uint8 / 255. Omniglot's release draws black strokes on white
and the loader inverts them (strokes = 255); a user's drawing is usually dark on light
too, and feeding it uninverted silently costs accuracy, so stroke models detect the
polarity from the image's border (the background of a drawing) unless told.

Accepted images: file paths of anything Pillow reads (any size, mode and format),
`PIL.Image.Image`s, and numpy arrays (`(H, W)`, `(H, W, 3)` or `(H, W, 4)`; uint8, or
floats in [0, 1]). Every image of a call is decoded before the result is returned, so a
caller that writes nothing until then never acts on half a batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from gaussmem.data.class_images import pixels_to_tensor
from gaussmem.data.datasets import available_datasets, dataset_entry
from gaussmem.errors import ImageError

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray
Polarity = Literal["auto", "as-is", "invert"]
POLARITIES: tuple[str, ...] = ("auto", "as-is", "invert")
#: Kinds of training images: drawings stored strokes-bright, or grey photographs.
KINDS: tuple[str, ...] = ("strokes", "photo")
#: Width in pixels of the border whose median decides a drawing's background.
_BORDER = 2


@dataclass(frozen=True)
class ImagePreprocessing:
    """What a checkpoint's training images were: `kind` ("strokes": drawings with
    strokes = 255 on 0; "photo": grey photographs) and their square `image_size`."""

    kind: str
    image_size: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"preprocessing kind must be one of {KINDS}, got {self.kind!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImagePreprocessing:
        """The preprocessing of a checkpoint's resolved config (`checkpoint["config"]`):
        Omniglot trains on strokes-bright drawings, LFW-a on grey photographs."""
        dataset = config["data"]["dataset"]
        if dataset not in available_datasets():
            raise ImageError(f"no image preprocessing is known for dataset {dataset!r}")
        return cls(dataset_entry(dataset).image_kind, int(config["model"]["image_size"]))


def load_images(images: Iterable[ImageInput], preprocessing: ImagePreprocessing,
                polarity: Polarity = "auto") -> torch.Tensor:
    """Model inputs `(n, 1, image_size, image_size)` float32 in [0, 1] for `images`.

    `polarity` (stroke models only): "auto" inverts drawings whose border is light
    (dark on light, as drawn on paper or screen), "invert" always, "as-is" never.
    Raises `ImageError` naming the first image that cannot be read.
    """
    if polarity not in POLARITIES:
        raise ImageError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    pixels = [prepare_image(image, preprocessing, polarity) for image in images]
    if not pixels:
        raise ImageError("no images given")
    return pixels_to_tensor(np.stack(pixels))


def prepare_image(image: ImageInput, preprocessing: ImagePreprocessing,
                  polarity: Polarity = "auto") -> np.ndarray:
    """One image as the training loaders made theirs: uint8 `(size, size)`."""
    grey = _as_grey(image)
    if preprocessing.kind == "strokes":
        if polarity == "invert" or (polarity == "auto" and is_dark_on_light(grey)):
            # ImageChops' C negation: ImageOps.invert builds its lookup table in Python,
            # a third of a small drawing's preprocessing.
            grey = ImageChops.invert(grey)
        grey = _pad_to_square(grey)
    else:
        grey = ImageOps.fit(grey, (min(grey.size),) * 2, Image.Resampling.BILINEAR)
    size = (preprocessing.image_size, preprocessing.image_size)
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.uint8)


def is_dark_on_light(grey: Image.Image) -> bool:
    """Whether a grey drawing's background is light: the median of its border pixels
    (a drawing's border is background in all but pathological crops) is above mid-grey."""
    return float(np.median(_border(grey))) > 127.5


def _border(grey: Image.Image) -> np.ndarray:
    """The pixels of a grey image's outer `_BORDER` rows and columns, flat."""
    pixels = np.asarray(grey)
    return np.concatenate([pixels[:_BORDER].ravel(), pixels[-_BORDER:].ravel(),
                           pixels[:, :_BORDER].ravel(), pixels[:, -_BORDER:].ravel()])


def describe(image: ImageInput) -> str:
    """How an error message names an image: its path, else its type and size."""
    if isinstance(image, str | os.PathLike):
        return str(image)
    if isinstance(image, Image.Image):
        return f"PIL image {image.size[0]}x{image.size[1]} mode {image.mode}"
    if isinstance(image, np.ndarray):
        return f"array of shape {image.shape} dtype {image.dtype}"
    return type(image).__name__


def _as_grey(image: ImageInput) -> Image.Image:
    if isinstance(image, str | os.PathLike):
        return _read_file(Path(image))
    if isinstance(image, Image.Image):
        return _flatten(image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise ImageError(f"cannot use a {type(image).__name__} as an image (give a file path, "
                     "a PIL image or a numpy array)")


def _read_file(path: Path) -> Image.Image:
    try:
        with Image.open(path) as opened:
            opened.load()
            return _flatten(opened)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ImageError(f"{path}: not a readable image ({reason})") from error


def _flatten(image: Image.Image) -> Image.Image:
    """Grey "L"; transparent pixels count as white paper (a PNG drawing with an alpha
    channel is usually strokes on nothing)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        high = float(values.max()) if values.size else 0.0
        scale = 255.0 / high if high > 255 else 1.0
        return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")
    return image.convert("L")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        channels = array.shape[2]
    elif array.ndim == 2:
        channels = 0
    else:
        raise ImageError(f"{describe(array)}: expected (H, W), (H, W, 3) or (H, W, 4)")
    if array.size == 0:
        raise ImageError(f"{describe(array)}: empty image")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageError(f"{describe(array)}: float images must hold values in [0, 1]")
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"{describe(array)}: use uint8, or floats in [0, 1]")
    modes = {0: "L", 1: "L", 3: "RGB", 4: "RGBA"}
    squeezed = array[..., 0] if channels == 1 else array
    return _flatten(Image.fromarray(np.ascontiguousarray(squeezed), modes[channels]))


def _pad_to_square(drawing: Image.Image) -> Image.Image:
    """Centre a drawing on a square of its own background (its border's median):
    cropping could cut strokes off, and stretching would change their shapes."""
    width, height = drawing.size
    if width == height:
        return drawing
    side = max(width, height)
    square = Image.new("L", (side, side), int(np.median(_border(drawing))))
    square.paste(drawing, ((side - width) // 2, (side - height) // 2))
    return square
