"""Where generation draws z_s: a style prior that depends on the content.

The VAE's prior makes z_c and z_s independent, N(0, I) each, but what the trained
encoder does with real drawings need not be: a character's stroke widths, slant and
size go with its shape, so z_s is partly predictable from z_c's posterior mean.
Generation that draws z_s from N(0, I) then pairs a class's content with styles its
drawings never had, which the decoder renders badly.

`ConditionalStylePrior` is the Gaussian fitted to that dependence on training drawings
(ex-post density estimation, as Ghosh et al. 2020 fit a density to a VAE's aggregate
posterior, here conditioned on the content): z_s | m ~ N(W^T [m, 1], L L^T), m the
posterior mean of z_c, with W the least-squares regression of the drawings' posterior
means of z_s on their m, and L L^T the covariance of its residuals plus the mean
posterior variance of z_s. It is fitted in closed form from a few thousand encoded
drawings and never trained by gradient, so it cannot change the model's accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gaussmem.data.class_images import pixels_to_tensor
from gaussmem.data.datasets import FewShotDataset
from gaussmem.errors import GenerativeError
from gaussmem.models.vae import GaussianVAE
from gaussmem.plumbing.device import module_device

#: Drawings encoded to fit the prior: up to FIT_CLASSES training classes, FIT_DRAWINGS
#: distinct drawings each (a few seconds on a CPU).
FIT_CLASSES, FIT_DRAWINGS = 2048, 2


@dataclass(frozen=True)
class ConditionalStylePrior:
    """z_s | m ~ N(weights^T [m, 1], cholesky cholesky^T), m = z_c's posterior mean (a
    memory entry's mean)."""

    #: `(content_dim + 1, style_dim)`: the regression's coefficients, intercept last.
    weights: torch.Tensor
    #: `(style_dim, style_dim)` lower-triangular factor of the conditional covariance.
    cholesky: torch.Tensor
    #: Drawings the prior was fitted on.
    n_drawings: int

    def sample(self, content: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_s for content means `content (n, content_dim)` from standard normal `noise
        (n, style_dim)` (scaled noise, e.g. by a temperature, narrows the spread alike)."""
        weights = self.weights.to(content.device, content.dtype)
        mean = content @ weights[:-1] + weights[-1]
        return mean + noise.to(content.device, content.dtype) @ self.cholesky.to(
            content.device, content.dtype).T


def fit_conditional_style_prior(content: torch.Tensor, style_means: torch.Tensor,
                                style_variances: torch.Tensor) -> ConditionalStylePrior:
    """The prior from `n` drawings' posterior means of z_c `(n, content_dim)` and the
    means and variances of their q(z_s | x) `(n, style_dim)`; `GenerativeError` when `n`
    cannot determine the regression (n <= content_dim + 1)."""
    n, content_dim = content.shape
    if n <= content_dim + 1:
        raise GenerativeError(f"a conditional style prior needs more than {content_dim + 1} "
                              f"drawings for a {content_dim}-d z_c, got {n}")
    design = torch.cat([content.double(), torch.ones(n, 1, dtype=torch.float64)], dim=1)
    targets = style_means.double()
    weights = torch.linalg.lstsq(design, targets).solution
    residuals = targets - design @ weights
    covariance = (torch.cov(residuals.T, correction=0).reshape(targets.shape[1], -1)
                  + torch.diag(style_variances.double().mean(dim=0)))
    return ConditionalStylePrior(weights.float(), torch.linalg.cholesky(covariance).float(), n)


@dataclass(frozen=True)
class EncodedDrawings:
    """Posterior moments of a sample of drawings: what a style prior is fitted on."""

    #: `(n, content_dim)` posterior means of z_c.
    content_means: torch.Tensor
    #: `(n, style_dim)` posterior means and variances of z_s.
    style_means: torch.Tensor
    style_variances: torch.Tensor


def _sample_shape(dataset: FewShotDataset, classes: int, drawings: int) -> tuple[int, int]:
    """`(classes, drawings per class)` `encode_drawings` takes from `dataset`."""
    return min(classes, dataset.n_classes), min(drawings, dataset.fewest_distinct_per_class)


@torch.no_grad()
def encode_drawings(vae: GaussianVAE, dataset: FewShotDataset, *, seed: int = 0,
                    classes: int = FIT_CLASSES, drawings: int = FIT_DRAWINGS
                    ) -> EncodedDrawings:
    """`drawings` distinct drawings of up to `classes` classes of `dataset`, chosen by
    `seed`, encoded in eval mode (the VAE's mode is restored after)."""
    rng = np.random.default_rng(seed)
    n_classes, per_class = _sample_shape(dataset, classes, drawings)
    chosen = rng.choice(dataset.n_classes, n_classes, replace=False)
    pixels = dataset.draw_distinct(chosen, per_class, rng)
    images = pixels_to_tensor(pixels.reshape(-1, *pixels.shape[2:]))
    device = module_device(vae)
    was_training = vae.training
    vae.eval()
    try:
        parts = [vae.encode(batch.to(device)) for batch in images.split(512)]
    finally:
        vae.train(was_training)
    return EncodedDrawings(torch.cat([part.content.mean for part in parts]).cpu(),
                           torch.cat([part.style.mean for part in parts]).cpu(),
                           torch.cat([part.style.var for part in parts]).cpu())


def conditional_style_prior_from(vae: GaussianVAE, dataset: FewShotDataset, *,
                                 seed: int = 0) -> ConditionalStylePrior | None:
    """Fit the prior on `encode_drawings` of `dataset` (the model's training split: the
    prior describes what it was trained on); None when the split has too few drawings
    to fit it (then generate from N(0, I))."""
    n_classes, per_class = _sample_shape(dataset, FIT_CLASSES, FIT_DRAWINGS)
    if n_classes * per_class <= vae.config.content_dim + 1:
        return None  # known before encoding anything
    encoded = encode_drawings(vae, dataset, seed=seed)
    return fit_conditional_style_prior(encoded.content_means, encoded.style_means,
                                       encoded.style_variances)


def prior_name(prior: ConditionalStylePrior | None) -> str:
    """How a record names where z_s came from: "conditional", or "standard" (N(0, I))."""
    return "standard" if prior is None else "conditional"
