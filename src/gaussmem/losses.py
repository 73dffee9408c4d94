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

Beyond the paper, `LossWeights.memory_term = "softmax"` puts `memory_softmax_loss` in the
triplet's place (weight c1): a softmax over every memory entry with probabilities
proportional to the similarities, the neighbourhood-components form of the same memory
lookup. The triplet sees one positive and one negative per query; this term sees all
entries, so every negative that is close gets a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gaussmem.models.vae import DiagonalGaussian

#: Names of the similarity maps accepted by `scaled_similarity`.
SIMILARITY_KINDS = ("paper", "per_dim")
#: What c1 weighs: the paper's triplet, or the softmax over all memory entries.
MEMORY_TERMS = ("triplet", "softmax")


def log_similarity(divergence: torch.Tensor, *, kind: str = "paper", dim: int = 1,
                   temperature: float = 1.0) -> torch.Tensor:
    """`log` of `scaled_similarity`, computed without the exponential's underflow."""
    if kind == "paper":
        scale = temperature
    elif kind == "per_dim":
        scale = temperature * dim
    else:
        raise ValueError(f"unknown similarity kind {kind!r}; choose from {SIMILARITY_KINDS}")
    return -divergence / scale


def scaled_similarity(divergence: torch.Tensor, *, kind: str = "paper",
                               dim: int = 1, temperature: float = 1.0) -> torch.Tensor:
    """Map a symmetric KL (summed over `dim` latent dimensions) to a similarity in [0, 1].

    `"paper"`: eq. 1, `exp(-SKL / temperature)` (temperature 1 is the paper exactly).
    `"per_dim"`: `exp(-SKL / (dim * temperature))`, the divergence per dimension; keeps the
    similarity away from 0 however many dimensions z_c has (the fix for the risk that
    exp(-SKL) is ~0 for every pair of tens-of-dimension posteriors).
    An infinite divergence (no entry found) maps to similarity 0.
    """
    return torch.exp(log_similarity(divergence, kind=kind, dim=dim, temperature=temperature))


def triplet_loss(sim_positive: torch.Tensor, sim_negative: torch.Tensor,
                 alpha: float = 0.1) -> torch.Tensor:
    """The paper's triplet: `max(s_neg + (1 - s_pos) + alpha, alpha) - alpha`, per query.

    `sim_positive`, `sim_negative`: `(n_query,)` similarities in [0, 1]; pass 0 where no
    positive (negative) entry exists: then that side contributes no gradient. Returns
    `(n_query,)` losses in [0, 2].
    """
    return torch.clamp(sim_negative + (1.0 - sim_positive) + alpha, min=alpha) - alpha


def memory_softmax_loss(log_similarities: torch.Tensor, same_label: torch.Tensor
                        ) -> torch.Tensor:
    """`-log P(query's label)` with `P(entry) = sim(q, entry) / sum_entries sim(q, .)`.

    `log_similarities (n_query, n_slots)`: `log_similarity` of every slot, `-inf` at empty
    slots; `same_label (n_query, n_slots)`: the slot holds the query's label (never true
    for an empty slot). Returns `(n_query,)` losses >= 0; 0, with no gradient, for a
    query whose label is not in the memory (nothing to be attracted to).
    """
    has_positive = same_label.any(dim=1, keepdim=True)
    # Rows without a positive are replaced by zeros before the log-sum-exps: a row of
    # -inf would give a NaN gradient even where the result is masked out.
    everything = torch.where(has_positive, log_similarities, 0.0)
    positives = torch.where(has_positive, log_similarities.masked_fill(~same_label, -torch.inf),
                            0.0)
    loss = torch.logsumexp(everything, dim=1) - torch.logsumexp(positives, dim=1)
    return torch.where(has_positive[:, 0], loss, 0.0)


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
    """c1, c2, c3 of the paper's total loss, its triplet margin alpha, and what c1 weighs."""

    triplet: float = 1.0
    latent: float = 0.1
    generative: float = 1.0
    alpha: float = 0.1
    # "triplet": the paper. "softmax": `memory_softmax_loss` in its place (not the paper).
    memory_term: str = "triplet"


def total_loss(*, sim_positive: torch.Tensor, sim_negative: torch.Tensor,
               content: DiagonalGaussian, style: DiagonalGaussian,
               self_logits: torch.Tensor, cross_logits: torch.Tensor, images: torch.Tensor,
               weights: LossWeights, memory_softmax: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
    """The total loss and its terms, each a scalar tensor (means over the batch).

    Shapes: similarities `(batch,)`; `content`/`style` Gaussians `(batch, d_c)`/`(batch,
    d_s)`; `self_logits` = decode(z_c(x), z_s(x)) and `cross_logits` = decode(z_c(x'),
    z_s(x)), both `(batch, C, H, W)` targets of `images` `(batch, C, H, W)` in [0, 1];
    `memory_softmax` `(batch,)` (`memory_softmax_loss`), needed when `weights.memory_term`
    is "softmax". Returns `{"loss", "triplet", "latent", "generative_self",
    "generative_cross"}`, plus "memory_softmax" when given. The triplet is always
    returned, as a diagnostic where c1 weighs the softmax instead.
    """
    triplet = triplet_loss(sim_positive, sim_negative, weights.alpha).mean()
    n_dims = content.mean.shape[-1] + style.mean.shape[-1]
    latent = ((latent_kl(content) + latent_kl(style)) / n_dims).mean()
    generative_self = bernoulli_nll(self_logits, images).mean()
    generative_cross = bernoulli_nll(cross_logits, images).mean()
    terms = {"triplet": triplet, "latent": latent, "generative_self": generative_self,
             "generative_cross": generative_cross}
    if memory_softmax is not None:
        terms["memory_softmax"] = memory_softmax.mean()
    if weights.memory_term == "triplet":
        memory_term = triplet
    elif weights.memory_term == "softmax":
        if memory_softmax is None:
            raise ValueError('weights.memory_term is "softmax" but no memory_softmax was given')
        memory_term = terms["memory_softmax"]
    else:
        raise ValueError(f"unknown memory_term {weights.memory_term!r}; choose from "
                         f"{MEMORY_TERMS}")
    loss = (weights.triplet * memory_term + weights.latent * latent
            + weights.generative * (generative_self + generative_cross))
    return {"loss": loss, **terms}
