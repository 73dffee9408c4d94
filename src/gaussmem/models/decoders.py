"""Deconvolutional decoders from latent codes to Bernoulli logits of an image."""

from __future__ import annotations

import torch
from torch import nn

#: Normalisations the decoder offers: "batch" (older checkpoints), "group", or None.
DECODER_NORMS = ("batch", "group", None)


def norm_layer(channels: int, norm: str | None) -> list[nn.Module]:
    """The decoder's normalisation after a convolution. "group" and None decode the
    posterior means at evaluation as they decoded samples in training; BatchNorm's
    running statistics, gathered on samples whose spread is mostly the posterior's
    noise, rescale the means' much smaller spread at evaluation."""
    if norm == "batch":
        return [nn.BatchNorm2d(channels)]
    if norm == "group":
        return [nn.GroupNorm(min(8, channels), channels)]
    if norm is None:
        return []
    raise ValueError(f"decoder norm must be one of {DECODER_NORMS}, got {norm!r}")


def refine_block(channels: int, n_layers: int, norm: str | None = "batch") -> list[nn.Module]:
    """`n_layers` x (conv3x3 -> BatchNorm -> ReLU) at one resolution: a transposed conv
    alone sees only a 2x2 neighbourhood of the coarser map, too little context to draw a
    stroke that continues across cells."""
    layers: list[nn.Module] = []
    for _ in range(n_layers):
        layers += [nn.Conv2d(channels, channels, kernel_size=3, padding=1,
                             bias=norm is None),
                   *norm_layer(channels, norm), nn.ReLU(inplace=True)]
    return layers


class DeconvDecoder(nn.Module):
    """Linear -> (hidden, side, side) -> transposed convs that double the side each time.

    For 28x28 Omniglot: linear to 64x7x7, then 7 -> 14 -> 28; `refine_layers` adds that
    many 3x3 convolutions at each resolution below the output. Strokes are thin and
    binary, so a small decoder suffices; the decoder only shapes the latent space through
    the generative loss and is never used for classification.

    Input `(batch, latent_dim)`; output logits `(batch, out_channels, image_size,
    image_size)` (apply a sigmoid for pixel probabilities).
    """

    def __init__(self, latent_dim: int, out_channels: int = 1, hidden_channels: int = 64,
                 image_size: int = 28, n_upsamples: int = 2, refine_layers: int = 0,
                 norm: str | None = "batch") -> None:
        super().__init__()
        side = image_size // (2**n_upsamples)
        if side * 2**n_upsamples != image_size:
            raise ValueError(f"image_size {image_size} is not divisible by 2**{n_upsamples}")
        self.hidden_channels = hidden_channels
        self.side = side
        self.project = nn.Sequential(
            nn.Linear(latent_dim, hidden_channels * side * side), nn.ReLU(inplace=True)
        )
        if refine_layers < 0:
            raise ValueError(f"refine_layers must be >= 0, got {refine_layers}")
        layers: list[nn.Module] = refine_block(hidden_channels, refine_layers, norm)
        channels = hidden_channels
        for index in range(n_upsamples):
            last = index == n_upsamples - 1
            next_channels = out_channels if last else max(channels // 2, 16)
            layers.append(nn.ConvTranspose2d(channels, next_channels, kernel_size=4,
                                             stride=2, padding=1))
            if not last:
                layers += [*norm_layer(next_channels, norm), nn.ReLU(inplace=True)]
                layers += refine_block(next_channels, refine_layers, norm)
            channels = next_channels
        self.deconv = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        hidden = self.project(latent).view(-1, self.hidden_channels, self.side, self.side)
        return self.deconv(hidden)
