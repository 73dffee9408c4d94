"""Fixed test-time views: a dataset seen through one small affine map.

A trained encoder is not exactly invariant to where and at what angle a character is
drawn, so one image's embedding carries some of that accident. Scoring a query from
several views of the same images (each shifted a pixel, or turned a few degrees) and
adding the scores averages it out (`gaussmem.methods.combined`). The views are fixed
maps, not random draws: an evaluation stays a pure function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gaussmem.data.augmentation import distort
from gaussmem.data.datasets import FewShotDataset

#: The name of the identity view: the images as they are.
PLAIN = "plain"
SHIFT_NAMES = ("right", "left", "down", "up")


def view_maps(image_shape: tuple[int, int], shift_pixels: int = 0,
              rotation_degrees: float = 0.0) -> dict[str, torch.Tensor]:
    """Named `(2, 3)` maps from output to input coordinates in `affine_grid`'s [-1, 1]
    units, for images of `image_shape (height, width)`: the plain images first, then 4
    shifts of `shift_pixels` and 2 rotations by +-`rotation_degrees` (each kind left out
    when its size is 0). A shift of p pixels is 2p / side in those units, so bilinear
    sampling moves whole pixels, with no blur."""
    height, width = image_shape
    if shift_pixels < 0 or rotation_degrees < 0:
        raise ValueError(f"view sizes must be >= 0, got shift_pixels={shift_pixels}, "
                         f"rotation_degrees={rotation_degrees}")
    if shift_pixels >= min(height, width):
        raise ValueError(f"a shift of {shift_pixels} pixels leaves nothing of a "
                         f"{height}x{width} image")
    maps = {PLAIN: torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
    if shift_pixels:
        dx, dy = 2.0 * shift_pixels / width, 2.0 * shift_pixels / height
        moves = ((dx, 0.0), (-dx, 0.0), (0.0, dy), (0.0, -dy))
        for name, (x, y) in zip(SHIFT_NAMES, moves, strict=True):
            # Sampling the input at p - t draws the image moved by t.
            maps[f"{name}{shift_pixels}px"] = torch.tensor([[1.0, 0.0, -x],
                                                            [0.0, 1.0, -y]])
    if rotation_degrees:
        for sign in (1.0, -1.0):
            angle = math.radians(sign * rotation_degrees)
            cos, sin = math.cos(angle), math.sin(angle)
            maps[f"rotate{sign * rotation_degrees:+g}deg"] = torch.tensor(
                [[cos, sin, 0.0], [-sin, cos, 0.0]])
    return maps


def apply_view(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """`images (n, C, H, W)` seen through the map `theta (2, 3)`; pixels from outside
    the image are 0."""
    return distort(images, theta.expand(len(images), 2, 3))


@dataclass(frozen=True)
class AffineView:
    """`dataset` seen through one fixed map: the sample interface an `EmbeddingCache`
    reads (`n_samples`, `name`, `sample_tensor`), so each view caches its own rows."""

    dataset: FewShotDataset
    view_name: str
    theta: torch.Tensor

    @property
    def n_samples(self) -> int:
        return self.dataset.n_samples

    @property
    def name(self) -> str:
        return f"{self.dataset.name}/{self.view_name}"

    def sample_tensor(self, sample_ids: np.ndarray) -> torch.Tensor:
        return apply_view(self.dataset.sample_tensor(sample_ids), self.theta)
