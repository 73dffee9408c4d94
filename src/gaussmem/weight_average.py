"""An exponential moving average of a network's weights, for validation and checkpoints.

Late in a run the trained weights wander between checkpoints that score within a CI of
each other; validating an average of them (`torch.optim.swa_utils.AveragedModel`) is the
usual cure. For a network with BatchNorm the weights alone are not enough: an average of
weights from different steps scales its activations differently from what the average of
the running statistics expects. So, as SWA does with `update_bn`, the average gets
BatchNorm statistics of its own, from a fixed set of training images, before it is used.
No preset averages: the cosine decay already ends a run at a low learning rate
(results/tuning/mavae_tuning.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

#: How a network runs on images so that every BatchNorm layer sees them; it must not draw
#: random numbers from the global generators (that would change the training run).
BatchNormPass = Callable[[nn.Module, torch.Tensor], object]


class _PassModule(nn.Module):
    """`update_bn` calls `model(images)`; this runs the method's pass instead."""

    def __init__(self, network: nn.Module, batch_norm_pass: BatchNormPass) -> None:
        super().__init__()
        self.network = network
        self.batch_norm_pass = batch_norm_pass

    def forward(self, images: torch.Tensor) -> None:
        self.batch_norm_pass(self.network, images)


class WeightAverage:
    """`decay`-EMA of `model`'s weights; `module` is the average with its own statistics.

    `statistics_images` returns the fixed training images (on the network's device, in
    its memory format) the statistics come from; it is called on first use only.
    """

    def __init__(self, model: nn.Module, decay: float,
                 statistics_images: Callable[[], torch.Tensor],
                 batch_norm_pass: BatchNormPass, batch_size: int = 512) -> None:
        # Parameters only: the BatchNorm statistics (the only buffers gaussmem's networks
        # have) are recomputed before every use, so averaging them each step would be
        # work thrown away.
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self._statistics_images = statistics_images
        self._images: torch.Tensor | None = None
        self._pass = _PassModule(self.averaged.module, batch_norm_pass)
        self._batch_size = batch_size
        self._stale = True

    def update(self, model: nn.Module) -> None:
        """Blend `model`'s current weights into the average (the first call copies)."""
        self.averaged.update_parameters(model)
        self._stale = True

    @property
    def module(self) -> nn.Module:
        """The averaged network, its BatchNorm statistics recomputed if it changed."""
        if self._stale:
            if self._images is None:
                self._images = self._statistics_images()
            with torch.no_grad():
                update_bn(self._images.split(self._batch_size), self._pass)
            self._stale = False
        return self.averaged.module

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore an average saved as `module.state_dict()` (statistics included)."""
        self.averaged.module.load_state_dict(state)
        # Any nonzero count: the next update blends into the loaded average, as an
        # uninterrupted run's would, instead of copying the trained weights.
        self.averaged.n_averaged.fill_(1)
        self._stale = False
