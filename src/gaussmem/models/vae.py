"""The paper's memory-augmented VAE network (section 3.1, figure 1), without the memory.

Two independent latent variables with N(0, I) priors: content `z_c` (its posterior's
parameters are the class embedding stored in the memory) and style `z_s` (everything
about a drawing that should not decide its class). The memory lives outside the network
(`gaussmem.memory`), so the network is an ordinary `nn.Module` with the decomposition of
pytorch/examples' VAE: `encode -> Gaussians`, `reparameterize`, `decode`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from gaussmem.models.decoders import DECODER_NORMS, DeconvDecoder
from gaussmem.models.encoders import Conv4Backbone, GaussianHead


class DiagonalGaussian(NamedTuple):
    """A batch of diagonal Gaussians: `mean` and `log_var`, each `(batch, dim)`."""

    mean: torch.Tensor
    log_var: torch.Tensor

    @property
    def var(self) -> torch.Tensor:
        """Variances `(batch, dim)`, the parametrization the memory stores."""
        return self.log_var.exp()

    def detach(self) -> DiagonalGaussian:
        return DiagonalGaussian(self.mean.detach(), self.log_var.detach())


class Posteriors(NamedTuple):
    """q(z_c | x) and q(z_s | x) for a batch of images."""

    content: DiagonalGaussian
    style: DiagonalGaussian


#: What the decoder can read of q(z_c | x) (`VAEConfig.content_to_decoder`).
CONTENT_TO_DECODER = ("sample", "mean", "detached_mean")


@dataclass
class VAEConfig:
    """Architecture of `GaussianVAE`. The paper gives no sizes; each default says why."""

    in_channels: int = 1
    image_size: int = 28
    # Conv4 with 64 channels: the trunk of every Omniglot few-shot baseline, so methods
    # compare like for like; wider did not help on validation (results/tuning/mavae_tuning.md).
    hidden_channels: int = 64
    # Four blocks: Conv4's 64-d feature; three did not help on validation
    # (results/tuning/mavae_tuning.md).
    n_blocks: int = 4
    # 64-d content: as wide as the Conv4 feature, so the embedding is not a bottleneck.
    content_dim: int = 64
    # 16-d style: enough for stroke width/slant/position; small so that class identity
    # cannot hide in z_s (the cross-reconstruction loss pushes it into z_c).
    style_dim: int = 16
    # Heads start close to (not at) the prior: at the prior every pair has exp(-SKL) ~ 1
    # and the triplet sits on a saddle; at the default init posteriors start far apart
    # (results/tuning/ablation.md).
    head_init_scale: float = 0.1
    decoder_hidden_channels: int = 64
    # 3x3 convolutions per decoder resolution below the output (0: transposed convs only,
    # the architecture older checkpoints were trained with).
    decoder_refine_layers: int = 0
    # The decoder's normalisation: "batch" (older checkpoints), "group" or None; see
    # `decoders.norm_layer`.
    decoder_norm: str | None = "batch"
    # p(x | z): "bernoulli" on the decoder's logits (near-binary strokes) or "gaussian"
    # with mean sigmoid(logits) and one learned standard deviation (grey photographs).
    likelihood: str = "bernoulli"
    # z_s's head reads the trunk's features without training the trunk, so what the
    # reconstruction asks of z_s (where one drawing's strokes run) does not pull the
    # features the memory compares; z_c alone shapes the trunk.
    style_detached: bool = False
    # What the decoder reads of q(z_c | x) in training and generation: "sample" (the
    # paper's ELBO), "mean", or "detached_mean" (the mean as a constant: the decoder
    # learns to draw what z_c says, and the reconstruction does not move z_c). The
    # memory's classes are posteriors as wide as the prior, apart only in many
    # dimensions together, so one sample says little of its class and the decoder
    # learns to take the class from z_s; the mean says it without noise.
    content_to_decoder: str = "sample"

    def __post_init__(self) -> None:
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"VAEConfig.likelihood must be 'bernoulli' or 'gaussian', "
                             f"got {self.likelihood!r}")
        if self.content_to_decoder not in CONTENT_TO_DECODER:
            raise ValueError(f"VAEConfig.content_to_decoder must be one of "
                             f"{CONTENT_TO_DECODER}, got {self.content_to_decoder!r}")
        for name in ("in_channels", "image_size", "hidden_channels", "n_blocks",
                     "content_dim", "style_dim", "decoder_hidden_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.decoder_norm not in DECODER_NORMS:
            raise ValueError(f"VAEConfig.decoder_norm must be one of {DECODER_NORMS}, "
                             f"got {self.decoder_norm!r}")
        if self.decoder_refine_layers < 0:
            raise ValueError(f"VAEConfig.decoder_refine_layers must be >= 0, "
                             f"got {self.decoder_refine_layers}")


class GaussianVAE(nn.Module):
    """Encoder with content and style heads plus a deconvolutional decoder.

    Images are `(batch, in_channels, image_size, image_size)` floats in [0, 1] with
    strokes bright; the decoder returns Bernoulli logits of the same shape.
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VAEConfig()
        self.backbone = Conv4Backbone(config.in_channels, config.hidden_channels,
                                      config.n_blocks, config.image_size)
        features = self.backbone.out_features
        self.content_head = GaussianHead(features, config.content_dim, config.head_init_scale)
        self.style_head = GaussianHead(features, config.style_dim, config.head_init_scale)
        n_upsamples = 2 if config.image_size % 4 == 0 else 0
        self.decoder = DeconvDecoder(config.content_dim + config.style_dim,
                                     config.in_channels, config.decoder_hidden_channels,
                                     config.image_size, n_upsamples,
                                     config.decoder_refine_layers,
                                     config.decoder_norm)
        # The Gaussian likelihood's log standard deviation, learned with the rest; it
        # starts at sigma = 0.1 of the [0, 1] pixel range.
        self.log_scale = (nn.Parameter(torch.tensor(math.log(0.1)))
                          if config.likelihood == "gaussian" else None)

    def encode(self, images: torch.Tensor) -> Posteriors:
        """Posteriors q(z_c | x), q(z_s | x); each Gaussian is `(batch, dim)`."""
        features = self.backbone(images)
        style_features = features.detach() if self.config.style_detached else features
        return Posteriors(DiagonalGaussian(*self.content_head(features)),
                          DiagonalGaussian(*self.style_head(style_features)))

    def encode_content(self, images: torch.Tensor) -> DiagonalGaussian:
        """Only q(z_c | x): what classification needs; skips the style head."""
        return DiagonalGaussian(*self.content_head(self.backbone(images)))

    def content_for_decoder(self, content: DiagonalGaussian) -> torch.Tensor:
        """The z_c the decoder reads (`VAEConfig.content_to_decoder`): a
        reparameterized sample, the mean, or the mean as a constant."""
        if self.config.content_to_decoder == "mean":
            return content.mean
        if self.config.content_to_decoder == "detached_mean":
            return content.mean.detach()
        return self.reparameterize(content)

    @staticmethod
    def reparameterize(gaussian: DiagonalGaussian) -> torch.Tensor:
        """Draw z = mean + std * eps with eps ~ N(0, I), differentiably (Kingma & Welling)."""
        std = torch.exp(0.5 * gaussian.log_var)
        return gaussian.mean + std * torch.randn_like(std)

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Logits `(batch, C, H, W)` (the pixel means are their sigmoid) from
        `z_c (batch, content_dim)` and `z_s (batch, style_dim)`."""
        return self.decoder(torch.cat([content, style], dim=1))

    def forward(self, images: torch.Tensor) -> tuple[Posteriors, torch.Tensor]:
        """Encode, sample both latents (z_c as `content_for_decoder` gives it), decode:
        `(posteriors, logits)`."""
        posteriors = self.encode(images)
        logits = self.decode(self.content_for_decoder(posteriors.content),
                             self.reparameterize(posteriors.style))
        return posteriors, logits
