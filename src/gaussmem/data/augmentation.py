"""Random affine distortions of a training batch, on the batch's device.

Omniglot's 20 drawings per class are few: a model that sees each training class
hundreds of times learns those drawings rather than the class. Rotating, scaling and
shifting each image a little makes every showing new while keeping its class (a
character is the same character a few degrees off). One `affine_grid`/`grid_sample`
pair distorts the whole batch in one call, so the step stays on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Random affine distortions of the MA-VAE's training images; all 0 (off) by default,
    as the paper trains on the plain images. Each image gets its own rotation, scale and
    shift, drawn uniformly within the bounds; uncovered pixels become 0 (the background
    of Omniglot's strokes-bright images). Validation and evaluation never distort."""

    max_rotation_degrees: float = 0.0
    # Scale factor drawn from [1 - max_scale, 1 + max_scale].
    max_scale: float = 0.0
    # Shift of each axis, as a fraction of the image side (2 / 28 ~ 0.07 is 2 pixels).
    max_shift: float = 0.0

    @property
    def enabled(self) -> bool:
        return any((self.max_rotation_degrees, self.max_scale, self.max_shift))


class RandomAffine:
    """Draws one affine distortion per image from its own seeded RNG (resumable through
    `state_dict`), independent of the batch sampler's draws."""

    def __init__(self, config: AugmentConfig, seed: int) -> None:
        self.config = config
        # Spawned from (seed, 1): the sampler's RNG uses `seed` itself.
        self._rng = np.random.Generator(np.random.PCG64([seed, 1]))

    def matrices(self, n_images: int) -> np.ndarray:
        """`(n_images, 2, 3)` float32 maps from output to input coordinates (in
        `affine_grid`'s [-1, 1] units): rotation by angle a and scale s, then a shift."""
        config, rng = self.config, self._rng
        angle = np.deg2rad(rng.uniform(-config.max_rotation_degrees,
                                       config.max_rotation_degrees, n_images))
        scale = rng.uniform(1 - config.max_scale, 1 + config.max_scale, n_images)
        # A shift of f of the side is 2f in [-1, 1] units.
        shift = 2 * rng.uniform(-config.max_shift, config.max_shift, (n_images, 2))
        # Sampling the input at R(-a) / s (x - t) draws the image rotated by a, scaled by
        # s and shifted by t.
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        linear = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)
        offset = -np.einsum("nij,nj->ni", linear, shift)
        return np.concatenate([linear, offset[..., None]], -1).astype(np.float32)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """`images (n, C, H, W)` -> each distorted by a fresh draw (see `distort`)."""
        return distort(images, torch.from_numpy(self.matrices(len(images))))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]


def distort(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """`images (n, C, H, W)` float, sampled at `theta (n, 2, 3)` (output -> input
    coordinates in [-1, 1] units, `affine_grid`'s convention), bilinear; pixels from
    outside the image are 0. Same shape, memory format and device as `images`."""
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    distorted = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
    if images.is_contiguous(memory_format=torch.channels_last):
        distorted = distorted.contiguous(memory_format=torch.channels_last)
    return distorted
