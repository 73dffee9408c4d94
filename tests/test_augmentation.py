"""Random affine distortions of training images: geometry, seeding, resume, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import synthetic_set
from gaussmem.config import AugmentConfig
from gaussmem.data.augmentation import RandomAffine, distort
from gaussmem.errors import ConfigError, TrainingError
from gaussmem.methods.mavae_training import MAVAETraining
from gaussmem.presets import resolve


def _blob_images(n: int = 3, side: int = 28) -> torch.Tensor:
    """Off-centre, asymmetric strokes (so a rotation or shift cannot map one onto itself)."""
    images = torch.zeros(n, 1, side, side)
    images[:, :, 6:9, 5:20] = 1.0
    images[:, :, 9:22, 17:19] = 0.6
    return images


def test_integer_pixel_shift_equals_a_roll_with_an_empty_border() -> None:
    images = _blob_images()
    side = images.shape[-1]
    # A shift of +3 pixels right and -2 down is -2 * shift / side in the sampling map.
    theta = torch.tensor([[1.0, 0.0, -2 * 3 / side], [0.0, 1.0, -2 * -2 / side]])
    shifted = distort(images, theta.expand(len(images), 2, 3))
    expected = torch.zeros_like(images)
    expected[..., :-2, 3:] = images[..., 2:, :-3]
    torch.testing.assert_close(shifted, expected, atol=1e-5, rtol=0)


def test_quarter_turn_equals_rot90() -> None:
    images = _blob_images()
    theta = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # R(-90 deg): sampling map
    turned = distort(images, theta.expand(len(images), 2, 3))
    matches = [torch.allclose(turned, torch.rot90(images, k, dims=(-2, -1)), atol=1e-5)
               for k in (1, 3)]
    assert sum(matches) == 1


def test_matrices_stay_within_the_configured_bounds() -> None:
    config = AugmentConfig(max_rotation_degrees=15, max_scale=0.2, max_shift=0.1)
    theta = RandomAffine(config, seed=0).matrices(5000)
    linear, offset = theta[:, :, :2], theta[:, :, 2]
    # linear = R(-a) / s: its determinant is 1 / s^2, its rotation angle -a.
    scale = 1 / np.sqrt(np.linalg.det(linear))
    angle = -np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 0, 0]))
    assert scale.min() >= 0.8 - 1e-5 and scale.max() <= 1.2 + 1e-5
    assert scale.min() < 0.82 and scale.max() > 1.18  # the whole range is used
    assert np.abs(angle).max() <= 15 + 1e-4 and np.abs(angle).max() > 14
    # offset = -linear @ shift, so shift = -linear^-1 @ offset, within +-2 * max_shift.
    shift = -np.einsum("nij,nj->ni", np.linalg.inv(linear), offset)
    assert np.abs(shift).max() <= 0.2 + 1e-5 and np.abs(shift).max() > 0.19


def test_pure_shift_moves_the_centre_of_mass_by_the_drawn_shift() -> None:
    config = AugmentConfig(max_shift=0.1)
    images = _blob_images(n=64)
    theta = RandomAffine(config, seed=3).matrices(64)
    distorted = RandomAffine(config, seed=3)(images)  # same seed: the same matrices
    side = images.shape[-1]
    grid = torch.arange(side, dtype=torch.float32)

    def centre(batch: torch.Tensor) -> torch.Tensor:
        mass = batch.sum((1, 2, 3))
        return torch.stack([(batch.sum((1, 2)) * grid).sum(-1) / mass,
                            (batch.sum((1, 3)) * grid).sum(-1) / mass], -1)

    moved = centre(distorted) - centre(images)
    expected = -torch.from_numpy(theta[:, :, 2]) * side / 2  # pixels (x, y)
    torch.testing.assert_close(moved, expected, atol=0.05, rtol=0)


def test_same_seed_same_distortions_and_state_resumes_the_stream() -> None:
    config = AugmentConfig(max_rotation_degrees=10, max_scale=0.1, max_shift=0.05)
    images = _blob_images()
    first, second = RandomAffine(config, seed=7), RandomAffine(config, seed=7)
    torch.testing.assert_close(first(images), second(images), atol=0, rtol=0)
    state = first.state_dict()
    expected = first(images)
    resumed = RandomAffine(config, seed=99)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed(images), expected, atol=0, rtol=0)
    assert not torch.equal(RandomAffine(config, seed=8)(images), expected)


def test_output_keeps_shape_range_and_channels_last() -> None:
    config = AugmentConfig(max_rotation_degrees=20, max_scale=0.2, max_shift=0.1)
    images = _blob_images().contiguous(memory_format=torch.channels_last)
    distorted = RandomAffine(config, seed=0)(images)
    assert distorted.shape == images.shape
    assert distorted.is_contiguous(memory_format=torch.channels_last)
    assert distorted.min() >= 0 and distorted.max() <= 1
    # Small distortions keep most of the ink inside the image.
    ratio = distorted.sum((1, 2, 3)) / images.sum((1, 2, 3))
    assert torch.all((ratio > 0.6) & (ratio < 1.6))


def test_training_distorts_only_when_configured() -> None:
    dataset = synthetic_set()
    plain = MAVAETraining(resolve("smoke"), dataset)
    assert plain.augment is None and plain.state_dict()["augment"] is None
    augmented = MAVAETraining(resolve("smoke", overrides=["augment.max_shift=0.1"]), dataset)
    assert augmented.augment is not None
    with pytest.raises(TrainingError, match="without augment"):
        augmented.load_state_dict(plain.state_dict())


@pytest.mark.parametrize(("override", "message"), [
    ("augment.max_rotation_degrees=-1", "must be >= 0"),
    ("augment.max_shift=-0.1", "must be >= 0"),
    ("augment.max_scale=1", "must be < 1"),
])
def test_bad_bounds_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve("smoke", overrides=[override])


def test_baselines_refuse_distortions() -> None:
    with pytest.raises(ConfigError, match="augment.* is not implemented for method"):
        resolve("protonet-cpu", overrides=["augment.max_shift=0.1"])
    assert math.isclose(resolve("smoke").augment.max_shift, 0.0)
