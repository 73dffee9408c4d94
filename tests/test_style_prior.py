"""The conditional style prior: a closed-form fit of how z_s goes with z_c."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaussmem.data.class_images import ClassImageSet
from gaussmem.errors import GenerativeError
from gaussmem.models.vae import GaussianVAE
from gaussmem.presets import preset
from gaussmem.style_prior import (
    conditional_style_prior_from,
    fit_conditional_style_prior,
)


def test_the_fit_recovers_a_linear_dependence_and_its_spread() -> None:
    """z_s means = z_c A + b + noise (std 0.1), posterior variances 0.04: the weights are
    [A; b] and the conditional covariance 0.01 + 0.04 per dimension, uncorrelated."""
    generator = torch.Generator().manual_seed(0)
    content = torch.randn(20_000, 3, generator=generator)
    slope = torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]])
    intercept = torch.tensor([0.25, -1.0])
    means = content @ slope + intercept + 0.1 * torch.randn(20_000, 2, generator=generator)
    prior = fit_conditional_style_prior(content, means, torch.full((20_000, 2), 0.04))
    torch.testing.assert_close(prior.weights, torch.cat([slope, intercept[None]]),
                               atol=3e-3, rtol=0)
    covariance = prior.cholesky @ prior.cholesky.T
    torch.testing.assert_close(covariance, 0.05 * torch.eye(2), atol=2e-3, rtol=0)
    assert prior.n_drawings == 20_000
    # Sampling: the regression's mean plus the factor times the noise.
    given = torch.tensor([[1.0, 0.0, 0.0]])
    torch.testing.assert_close(prior.sample(given, torch.zeros(1, 2)),
                               (given @ slope + intercept), atol=5e-3, rtol=0)


def test_too_few_drawings_to_fit_are_an_error_or_the_standard_prior() -> None:
    with pytest.raises(GenerativeError, match="more than 4 drawings for a 3-d z_c"):
        fit_conditional_style_prior(torch.randn(4, 3), torch.randn(4, 2), torch.ones(4, 2))
    vae = GaussianVAE(preset("smoke").model).eval()
    rng = np.random.default_rng(0)
    # 2 classes x 2 drawings for a 8-d z_c: nothing to fit, generation keeps N(0, I).
    tiny = ClassImageSet(rng.integers(0, 255, (2, 2, 28, 28), dtype=np.uint8),
                         ["a", "b"], "tiny")
    assert conditional_style_prior_from(vae, tiny) is None
    assert vae.training is False
