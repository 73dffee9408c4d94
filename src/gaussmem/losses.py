"""The paper's training objective as pure functions (Tseran & Harada 2017, section 3.1).

    total = c1 * triplet + c2 * latent + c3 * (generative_{z_c1} + generative_{z_c2})

* triplet (eq. after eq. 1): `max(sim(q, neg) + (1 - sim(q, pos)) + alpha, alpha) - alpha`
  with `sim = exp(-symmetric KL)` (eq. 1) against the memory; `pos` is the nearest entry
  carrying the query's label, `neg` the nearest with another label. Memory entries are
  constants (the memory is not differentiable).
* latent: KL(q(z_c|x) || N(0,I)) + KL(q(z_s|x) || N(0,I)), the VAE latent loss.
* generative_{z_c1}: -log p(x | z_c(x), z_s(x)); generative_{z_c2}: -log p(x | z_c(x'),
  z_s(x)) with x' another drawing of x's class, which forces the content into z_c.

Normalization (the paper does not give it): the latent loss is the mean KL per latent
dimension and the generative losses are the mean Bernoulli NLL per pixel (nats). Both
are then O(0.1-1), like the triplet, so the weights c1, c2, c3 are O(1) numbers that do
not have to change with the latent size or the image size.

Note: with `sim` in [0, 1] the triplet's argument is always >= alpha, so the max never
clips and the loss equals `1 + sim(q, neg) - sim(q, pos)`; alpha has no effect. We keep
the paper's form anyway (see docs/model.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gaussmem.models.vae import DiagonalGaussian

#: Names of the similarity maps accepted by `scaled_similarity`.
SIMILARITY_KINDS = ("paper", "per_dim")


def scaled_similarity(divergence: torch.Tensor, *, kind: str = "paper",
                               dim: int = 1, temperature: float = 1.0) -> torch.Tensor:
    """Map a symmetric KL (summed over `dim` latent dimensions) to a similarity in [0, 1].

    `"paper"`: eq. 1, `exp(-SKL / temperature)` (temperature 1 is the paper exactly).
    `"per_dim"`: `exp(-SKL / (dim * temperature))`, the divergence per dimension; keeps the
    similarity away from 0 however many dimensions z_c has (the fix for the risk that
    exp(-SKL) is ~0 for every pair of tens-of-dimension posteriors).
    An infinite divergence (no entry found) maps to similarity 0.
    """
    if kind == "paper":
        scale = temperature
    elif kind == "per_dim":
        scale = temperature * dim
    else:
        raise ValueError(f"unknown similarity kind {kind!r}; choose from {SIMILARITY_KINDS}")
    return torch.exp(-divergence / scale)


def triplet_loss(sim_positive: torch.Tensor, sim_negative: torch.Tensor,
                 alpha: float = 0.1) -> torch.Tensor:
    """The paper's triplet: `max(s_neg + (1 - s_pos) + alpha, alpha) - alpha`, per query.

    `sim_positive`, `sim_negative`: `(n_query,)` similarities in [0, 1]; pass 0 where no
    positive (negative) entry exists: then that side contributes no gradient. Returns
    `(n_query,)` losses in [0, 2].
    """
    return torch.clamp(sim_negative + (1.0 - sim_positive) + alpha, min=alpha) - alpha


def latent_kl(gaussian: DiagonalGaussian) -> torch.Tensor:
    """KL(N(mean, var) || N(0, I)) per sample, summed over dimensions: `(batch,)`."""
    mean, log_var = gaussian
    return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(-1)


def bernoulli_nll(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel Bernoulli NLL (nats) of `images` in [0, 1] under `logits`: `(batch,)`.

    Grey anti-aliased pixels are used as soft targets (binary cross-entropy), the usual
    continuous relaxation for Omniglot.
    """
    nll = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
    return nll.flatten(1).mean(-1)


@dataclass(frozen=True)
class LossWeights:
    """c1, c2, c3 of the paper's total loss, and its triplet margin alpha."""

    triplet: float = 1.0
    latent: float = 0.1
    generative: float = 1.0
    alpha: float = 0.1


def total_loss(*, sim_positive: torch.Tensor, sim_negative: torch.Tensor,
               content: DiagonalGaussian, style: DiagonalGaussian,
               self_logits: torch.Tensor, cross_logits: torch.Tensor, images: torch.Tensor,
               weights: LossWeights) -> dict[str, torch.Tensor]:
    """The paper's total loss and its terms, each a scalar tensor (means over the batch).

    Shapes: similarities `(batch,)`; `content`/`style` Gaussians `(batch, d_c)`/`(batch,
    d_s)`; `self_logits` = decode(z_c(x), z_s(x)) and `cross_logits` = decode(z_c(x'),
    z_s(x)), both `(batch, C, H, W)` targets of `images` `(batch, C, H, W)` in [0, 1].
    Returns `{"loss", "triplet", "latent", "generative_self", "generative_cross"}`.
    """
    triplet = triplet_loss(sim_positive, sim_negative, weights.alpha).mean()
    n_dims = content.mean.shape[-1] + style.mean.shape[-1]
    latent = ((latent_kl(content) + latent_kl(style)) / n_dims).mean()
    generative_self = bernoulli_nll(self_logits, images).mean()
    generative_cross = bernoulli_nll(cross_logits, images).mean()
    loss = (weights.triplet * triplet + weights.latent * latent
            + weights.generative * (generative_self + generative_cross))
    return {"loss": loss, "triplet": triplet, "latent": latent,
            "generative_self": generative_self, "generative_cross": generative_cross}
