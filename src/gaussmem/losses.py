"""The paper's training objective as pure functions (Tseran & Harada 2017, section 3.1).

    total = c1 * triplet + c2 * latent + c3 * (generative_{z_c1} + generative_{z_c2})

* triplet (eq. after eq. 1): `max(sim(q, neg) + (1 - sim(q, pos)) + alpha, alpha) - alpha`
  with `sim = exp(-symmetric KL)` (eq. 1) against the memory; `pos` is the nearest entry
  carrying the query's label, `neg` the nearest with another label. Memory entries are
  constants (the memory is not differentiable).
* latent: KL(q(z_c|x) || N(0,I)) + KL(q(z_s|x) || N(0,I)), the VAE latent loss.
* generative_{z_c1}: -log p(x | z_c(x), z_s(x)); generative_{z_c2}: -log p(x | z_c(x'),
  z_s(x)) with x' another drawing of x's class, meant to force the content into z_c
  (`LossWeights.cross_style = "other_class"` takes z_s from a drawing of another class
  instead, which does force it: see `LossWeights`).

Units (the paper does not give them): every term is per image, as in the ELBO.
The latent loss sums the KL over latent dimensions and the generative losses sum the
negative log-likelihood over pixels, both averaged over the batch; the triplet is per
query. So c2 = c3 = 1 is the ELBO (beta = 1) at any image size or latent size, and c1
says how many nats of likelihood one unit of triplet is worth. Averaging over pixels
instead would weigh the KL, and the triplet, H * W times more against the
reconstruction at every image size, which lets the decoder collapse to the mean image.

The KL of z_s can carry its own weight (`latent_style`): a z_s that is costly to use
cannot smuggle the class past z_c, so the decoder has to read the class from z_c.

The likelihood p(x | z) is a per-pixel Bernoulli on the decoder's logits (`bernoulli`,
for Omniglot's near-binary strokes) or a Gaussian with mean sigmoid(logits) and one
learned standard deviation (`gaussian`, for grey photographs, whose continuous
intensities give a Bernoulli a large irreducible floor).

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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gaussmem.gaussian import symmetric_kl_diag
from gaussmem.models.vae import DiagonalGaussian, GaussianVAE

#: Names of the similarity maps accepted by `scaled_similarity`.
SIMILARITY_KINDS = ("paper", "per_dim")
#: What c1 weighs: the paper's triplet, or the softmax over all memory entries.
MEMORY_TERMS = ("triplet", "softmax")
#: Names of the pixel likelihoods p(x | z) accepted by `reconstruction_nll`.
LIKELIHOODS = ("bernoulli", "gaussian")
#: Where the cross term's z_s comes from (`LossWeights.cross_style`).
CROSS_STYLES = ("own", "other_class")
#: What `content_consistency` trains (`LossWeights.consistency_trains`).
CONSISTENCY_TRAINS = ("all", "decoder")


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
    """Bernoulli NLL (nats) of `images` in [0, 1] under `logits`, summed over pixels:
    `(batch,)`.

    Grey anti-aliased pixels are used as soft targets (binary cross-entropy), the usual
    continuous relaxation for Omniglot.
    """
    nll = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
    return nll.flatten(1).sum(-1)


def gaussian_nll(logits: torch.Tensor, images: torch.Tensor, log_scale: torch.Tensor
                 ) -> torch.Tensor:
    """Gaussian NLL (nats) of `images` under mean `sigmoid(logits)` and one standard
    deviation `exp(log_scale)` (a scalar tensor), summed over pixels: `(batch,)`.

    A learned scale calibrates the decoder (Rybkin et al. 2021): the weight of the
    squared error, 1 / (2 sigma^2), follows how well the decoder fits, instead of being
    a fixed guess.
    """
    squared_error = (torch.sigmoid(logits) - images).square().flatten(1)
    n_pixels = squared_error.shape[1]
    return (0.5 * squared_error.sum(-1) * torch.exp(-2.0 * log_scale)
            + n_pixels * (log_scale + 0.5 * math.log(2.0 * math.pi)))


def reconstruction_nll(logits: torch.Tensor, images: torch.Tensor, likelihood: str,
                       log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(images | z) per image `(batch,)`, nats summed over pixels, under the named
    `likelihood` (`LIKELIHOODS`); `log_scale` is the Gaussian's learned log-sigma."""
    if likelihood == "bernoulli":
        return bernoulli_nll(logits, images)
    if likelihood == "gaussian":
        if log_scale is None:
            raise ValueError("the gaussian likelihood needs the decoder's log_scale")
        return gaussian_nll(logits, images, log_scale)
    raise ValueError(f"unknown likelihood {likelihood!r}; choose from {LIKELIHOODS}")


def vae_reconstruction_nll(vae: GaussianVAE, logits: torch.Tensor, images: torch.Tensor
                           ) -> torch.Tensor:
    """`reconstruction_nll` under the likelihood `vae` was built with: `(batch,)` nats."""
    return reconstruction_nll(logits, images, vae.config.likelihood, vae.log_scale)


@dataclass(frozen=True)
class LossWeights:
    """c1, c2, c3 of the paper's total loss (per-image units: c2 = c3 = 1 is the ELBO),
    the KL weight of z_s, the triplet margin alpha, and what c1 weighs."""

    triplet: float = 100.0
    latent: float = 1.0
    generative: float = 1.0
    # The KL weight of z_s; None: `latent`, as in the paper's single latent loss.
    latent_style: float | None = None
    # The weight of the cross-reconstruction term; None: `generative`, as in the paper.
    # With `triplet = 0` and this 0 the model is a plain VAE (the reference row).
    generative_cross: float | None = None
    alpha: float = 0.1
    # "triplet": the paper. "softmax": `memory_softmax_loss` in its place (not the paper).
    memory_term: str = "triplet"
    # The cross term decodes x from z_c of another drawing of x's class and a z_s:
    # "own", x's own (the paper), or "other_class", a drawing of another class's. With
    # its own z_s the decoder can read the class from z_s and satisfy both generative
    # terms; with another class's z_s, z_s says the wrong class, so the decoder must read
    # the class from z_c and learns to take only what varies within a class from z_s.
    cross_style: str = "own"
    # Beyond the paper: the weight of `content_consistency` (0: off). A drawing decoded
    # from x's z_c and a z_s drawn from the prior, encoded again, must give back x's
    # q(z_c | x): whatever z_s holds, it cannot change the class the decoder draws, so
    # z_s may carry how a drawing is drawn but not what it is.
    content_consistency: float = 0.0
    # What that term trains: "all" (the encoder too, both where it reads the decoded
    # drawing and through the z_c it was decoded from), or "decoder" (the encoder's
    # current weights judge the drawing and z_c is a given: only the decoder learns to
    # draw the class z_c names, and the features the memory compares are left alone;
    # exactly so with a decoder without batch statistics, as the presets' GroupNorm).
    consistency_trains: str = "all"


def content_consistency_loss(content: DiagonalGaussian, regenerated: DiagonalGaussian
                             ) -> torch.Tensor:
    """Symmetric KL (nats, summed over dimensions) between q(z_c | x), a constant here,
    and q(z_c | x~) of the drawing x~ decoded from x's z_c and a prior z_s: `(batch,)`.
    The gradient moves the decoder (and the encoder's reading of x~), not x's own
    posterior, which the triplet and the reconstruction place."""
    target_mean, target_log_var = content.mean.detach(), content.log_var.detach()
    return symmetric_kl_diag(regenerated.mean, regenerated.log_var.exp(), target_mean,
                             target_log_var.exp())


def total_loss(*, sim_positive: torch.Tensor, sim_negative: torch.Tensor,
               content: DiagonalGaussian, style: DiagonalGaussian,
               self_logits: torch.Tensor, cross_logits: torch.Tensor, images: torch.Tensor,
               weights: LossWeights, likelihood: str = "bernoulli",
               log_scale: torch.Tensor | None = None,
               memory_softmax: torch.Tensor | None = None,
               regenerated_content: DiagonalGaussian | None = None
               ) -> dict[str, torch.Tensor]:
    """The total loss and its terms, each a scalar tensor in nats per image (means over
    the batch).

    Shapes: similarities `(batch,)`; `content`/`style` Gaussians `(batch, d_c)`/`(batch,
    d_s)`; `self_logits` = decode(z_c(x), z_s(x)) and `cross_logits` = decode(z_c(x'),
    z_s(x)), both `(batch, C, H, W)` targets of `images` `(batch, C, H, W)` in [0, 1];
    `likelihood`/`log_scale` as in `reconstruction_nll`; `memory_softmax` `(batch,)`
    (`memory_softmax_loss`), needed when `weights.memory_term` is "softmax";
    `regenerated_content`: q(z_c | decode(z_c, z_s ~ prior)) `(batch, d_c)`, needed
    when `weights.content_consistency` > 0. Returns `{"loss", "triplet", "latent",
    "latent_content", "latent_style", "generative_self", "generative_cross"}` ("latent"
    is the unweighted sum of the two KLs), plus "memory_softmax" and
    "content_consistency" when given. The triplet is always returned, as a diagnostic where
    c1 weighs the softmax instead.
    """
    triplet = triplet_loss(sim_positive, sim_negative, weights.alpha).mean()
    latent_content = latent_kl(content).mean()
    latent_style = latent_kl(style).mean()
    generative_self = reconstruction_nll(self_logits, images, likelihood, log_scale).mean()
    generative_cross = reconstruction_nll(cross_logits, images, likelihood, log_scale).mean()
    terms = {"triplet": triplet, "latent": latent_content + latent_style,
             "latent_content": latent_content, "latent_style": latent_style,
             "generative_self": generative_self, "generative_cross": generative_cross}
    if memory_softmax is not None:
        terms["memory_softmax"] = memory_softmax.mean()
    if regenerated_content is not None:
        terms["content_consistency"] = content_consistency_loss(content,
                                                                regenerated_content).mean()
    elif weights.content_consistency:
        raise ValueError("weights.content_consistency > 0 but no regenerated_content was given")
    if weights.memory_term == "triplet":
        memory_term = triplet
    elif weights.memory_term == "softmax":
        if memory_softmax is None:
            raise ValueError('weights.memory_term is "softmax" but no memory_softmax was given')
        memory_term = terms["memory_softmax"]
    else:
        raise ValueError(f"unknown memory_term {weights.memory_term!r}; choose from "
                         f"{MEMORY_TERMS}")
    style_weight = weights.latent if weights.latent_style is None else weights.latent_style
    cross_weight = (weights.generative if weights.generative_cross is None
                    else weights.generative_cross)
    loss = (weights.triplet * memory_term + weights.latent * latent_content
            + style_weight * latent_style + weights.generative * generative_self
            + cross_weight * generative_cross)
    if weights.content_consistency:
        loss = loss + weights.content_consistency * terms["content_consistency"]
    return {"loss": loss, **terms}
