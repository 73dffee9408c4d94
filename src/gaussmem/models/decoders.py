"""Deconvolutional decoders from latent codes to Bernoulli logits of an image."""

from __future__ import annotations

import torch
from torch import nn


class DeconvDecoder(nn.Module):
    """Linear -> (hidden, side, side) -> transposed convs that double the side each time.

    For 28x28 Omniglot: linear to 64x7x7, then 7 -> 14 -> 28. Strokes are thin and
    binary, so a small decoder suffices; the decoder only shapes the latent space through
    the generative loss and is never used for classification.

    Input `(batch, latent_dim)`; output logits `(batch, out_channels, image_size,
    image_size)` (apply a sigmoid for pixel probabilities).
    """

    def __init__(self, latent_dim: int, out_channels: int = 1, hidden_channels: int = 64,
                 image_size: int = 28, n_upsamples: int = 2) -> None:
        super().__init__()
        side = image_size // (2**n_upsamples)
        if side * 2**n_upsamples != image_size:
            raise ValueError(f"image_size {image_size} is not divisible by 2**{n_upsamples}")
        self.hidden_channels = hidden_channels
        self.side = side
        self.project = nn.Sequential(
            nn.Linear(latent_dim, hidden_channels * side * side), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        channels = hidden_channels
        for index in range(n_upsamples):
            last = index == n_upsamples - 1
            next_channels = out_channels if last else max(channels // 2, 16)
            layers.append(nn.ConvTranspose2d(channels, next_channels, kernel_size=4,
                                             stride=2, padding=1))
            if not last:
                layers += [nn.BatchNorm2d(next_channels), nn.ReLU(inplace=True)]
            channels = next_channels
        self.deconv = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        hidden = self.project(latent).view(-1, self.hidden_channels, self.side, self.side)
        return self.deconv(hidden)
