"""`ClassImageSet`: a dataset laid out as classes x samples, the shape episodes need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 `(n, H, W)` -> float32 `(n, 1, H, W)` in [0, 1]: what every network takes."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32)
    return tensor.div_(255.0).unsqueeze(1)


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

    #: Pixel value 255 is a stroke, not light: figures draw such sets inverted.
    strokes_bright = True

    @property
    def n_samples(self) -> int:
        """Samples in the set; flat sample id = class * n_samples_per_class + sample."""
        return self.n_classes * self.n_samples_per_class

    @property
    def fewest_distinct_per_class(self) -> int:
        """Distinct drawings every class can give a training step."""
        return self.n_samples_per_class

    def sample_tensor(self, sample_ids: np.ndarray) -> torch.Tensor:
        """float32 `(len(sample_ids), 1, H, W)` in [0, 1] of flat sample ids."""
        classes, samples = np.divmod(np.asarray(sample_ids, dtype=np.int64).ravel(),
                                     self.n_samples_per_class)
        return pixels_to_tensor(self.images[classes, samples])

    def draw_distinct(self, class_indices: np.ndarray, count: int,
                      rng: np.random.Generator) -> np.ndarray:
        """uint8 `(len(class_indices), count, H, W)`: `count` distinct random drawings of
        each class (one uniform key per drawing, argsorted)."""
        keys = rng.random((len(class_indices), self.n_samples_per_class))
        drawings = np.argsort(keys, axis=1)[:, :count]
        return self.images[np.asarray(class_indices)[:, None], drawings]

    def pixel_mean(self) -> np.ndarray:
        """Mean image over every sample, float64 `(H, W)` in [0, 255] (class by class: the
        set may be a memory map)."""
        total = np.zeros(self.image_shape, dtype=np.float64)
        for class_images in self.images:
            total += class_images.astype(np.float64).sum(axis=0)
        return total / self.n_samples
