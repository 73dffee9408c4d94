"""Convolutional feature extractors and the diagonal-Gaussian heads on top of them."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """The block of Vinyals/Snell's Conv4, conv3x3 -> BatchNorm -> ReLU -> maxpool 2x2,
    computed as conv3x3 -> BatchNorm -> maxpool 2x2 -> ReLU.

    ReLU is monotone, so it commutes with the max: both orders give the same outputs and
    the same gradients. Applying it after the pool runs ReLU and its backward on a
    quarter of the values; on a CPU those memory-bound passes over the 28x28 activations
    cost about as much as the convolutions (benchmarks/train_step_speed.py). The layer
    indices of the parameters (conv 0, BatchNorm 1) are those of the usual order, so
    checkpoints are unchanged.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    )


class Conv4Backbone(nn.Module):
    """The standard few-shot Omniglot trunk: `n_blocks` conv blocks, then flatten.

    A 28x28 input shrinks 28 -> 14 -> 7 -> 3 -> 1, so with 64 channels the feature is
    64-d, the size every Omniglot baseline (Matching Nets, ProtoNet) uses; keeping it lets
    the comparison with those baselines be about the embedding, not the trunk.

    Input `(batch, in_channels, H, W)`, output `(batch, out_features)`.
    """

    def __init__(self, in_channels: int = 1, hidden_channels: int = 64, n_blocks: int = 4,
                 image_size: int = 28) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        blocks = [conv_block(in_channels, hidden_channels)]
        blocks += [conv_block(hidden_channels, hidden_channels) for _ in range(n_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)
        side = image_size
        for _ in range(n_blocks):
            side //= 2
        if side < 1:
            raise ValueError(f"{n_blocks} blocks shrink a {image_size}px image to nothing")
        self.out_features = hidden_channels * side * side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(images).flatten(1)

    def fold_batch_norms_(self) -> None:
        """Fold each block's BatchNorm (its running statistics) into its convolution, in
        place: the same function up to rounding, without the normalisation's pass over
        the largest activations, which cost a third of encoding a batch on a CPU.

        For inference only: the folded trunk cannot train, and its parameters no longer
        match a checkpoint's (a convolution gains a bias, the BatchNorms are gone).
        """
        if self.training:
            raise RuntimeError("fold_batch_norms_ needs eval mode: training BatchNorm "
                               "normalises by the batch's statistics, not the running ones")
        for block in self.blocks:
            conv, norm = block[0], block[1]
            if isinstance(norm, nn.BatchNorm2d):
                block[0] = fuse_conv_bn_eval(conv, norm)
                block[1] = nn.Identity()


class GaussianHead(nn.Module):
    """Linear map from features to a diagonal Gaussian: mean and log-variance.

    `init_scale` multiplies the default initial weights, which sets the symmetric KL
    between posteriors at the start, and so where the triplet on exp(-SKL) starts: too
    large and exp(-SKL) ~ 0 for most pairs (the triplet is nearly constant), too small
    and every posterior is ~N(0, I), exp(-SKL) ~ 1 for every pair and the triplet's
    gradient, proportional to the gap between means, vanishes (a saddle). See
    `VAEConfig.head_init_scale` for the measured choice and docs/model.md.

    Input `(batch, in_features)`; output `(mean, log_var)`, each `(batch, dim)`.
    """

    def __init__(self, in_features: int, dim: int, init_scale: float = 1.0,
                 min_log_var: float = -10.0, max_log_var: float = 10.0) -> None:
        super().__init__()
        self.mean = nn.Linear(in_features, dim)
        self.log_var = nn.Linear(in_features, dim)
        self.min_log_var = min_log_var
        self.max_log_var = max_log_var
        with torch.no_grad():
            for layer in (self.mean, self.log_var):
                layer.weight.mul_(init_scale)
                layer.bias.zero_()

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Always float32, also under mixed-precision autocast: the memory compares
        # posteriors by divergences of their means and log-variances, and bfloat16's
        # 8-bit mantissa would blur those comparisons (gaussmem.plumbing.precision).
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            # Clamping the log-variance keeps exp() finite and the KL terms bounded; the
            # range e^-10..e^10 is far wider than anything a trained model uses.
            log_var = self.log_var(features).clamp(self.min_log_var, self.max_log_var)
            return self.mean(features), log_var
