"""`ClassImageSet`: a dataset laid out as classes x samples, the shape episodes need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassImageSet:
    """Images grouped by class, every class with the same number of samples.

    Attributes:
        images: uint8 array `(n_classes, n_samples_per_class, height, width)`, strokes
            bright (255 = stroke, 0 = background); divide by 255 for model inputs in [0, 1].
            May be a read-only memory map: never write into it.
        class_names: one name per class, e.g. `"Angelic/character01/rot090"`.
        name: what this set is, e.g. `"omniglot/vinyals/train"`, for logs and results.
    """

    images: np.ndarray
    class_names: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(
                f"{self.name}: images must be (n_classes, n_samples, height, width), "
                f"got shape {self.images.shape}"
            )
        if len(self.class_names) != self.images.shape[0]:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for "
                f"{self.images.shape[0]} classes"
            )

    @property
    def n_classes(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_samples_per_class(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int]:
        return (int(self.images.shape[2]), int(self.images.shape[3]))
