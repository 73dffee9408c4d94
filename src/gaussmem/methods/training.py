"""What a method hands the generic training loop (`gaussmem.train`).

The loop owns everything that is the same for every method: budgets, the learning-rate
schedule, logging, validation on the validation split through the `FewShotClassifier`
interface, best/last checkpoints, resume. A `MethodTraining` owns the rest: its network,
optimizer, batch sampler, training memory (if any) and one optimizer step. Subclasses are
registered with `register_training(name)` under their classifier's name.

Checkpoint entries a `MethodTraining` provides (`state_dict`): `model` (the weights a
classifier is built from: the moving average where `optim.ema_decay` asks for one),
`trained_model` (the optimizer's weights when they differ from `model`, else None),
`optimizer`, `memory` (a state dict, or None for memory-free methods) and `sampler`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import nn

from gaussmem.config import TrainConfig
from gaussmem.data.datasets import FewShotDataset
from gaussmem.data.training_sampler import images_to_tensor
from gaussmem.errors import ConfigError, TrainingError
from gaussmem.methods.base import FewShotClassifier
from gaussmem.plumbing.cuda_graphs import (
    capturable_adam,
    make_capturable_,
    portable_optimizer_state,
)
from gaussmem.plumbing.device import module_device, resolve_device
from gaussmem.plumbing.precision import resolve_precision
from gaussmem.weight_average import WeightAverage

#: Training classes (two drawings each) a weight average's BatchNorm statistics come from.
STATISTICS_CLASSES = 1024


class MethodTraining(ABC):
    """A method's trainable state and its step; built fresh (seeded) for every run.

    Attributes set by subclasses: `model` (the `nn.Module` whose state is `model` in the
    checkpoint), `optimizer`, `sampler` (with `state_dict`/`load_state_dict`), and
    `memory` (an `nn.Module` or None).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: Any
    memory: nn.Module | None = None
    _average: WeightAverage | None = None
    #: Loss terms shown in the progress bar (all terms are logged).
    postfix_terms: tuple[str, ...] = ("loss", "accuracy")
    #: Device types the method's training step supports; with `device = "auto"` a
    #: method that lacks the machine's GPU type trains on the CPU.
    device_types: tuple[str, ...] = ("cpu",)
    #: Whether the method trains under torchrun (DDP, gaussmem.distributed).
    distributed: bool = False
    #: Settings of the shared config that only some methods implement; a method that
    #: implements more says so here, and `check_config` refuses the rest.
    memory_terms: tuple[str, ...] = ("triplet",)
    precisions: tuple[str, ...] = ("float32",)
    augments: bool = False
    records_cuda_graph: bool = False

    def __init__(self, config: TrainConfig, train_set: FewShotDataset) -> None:
        side = config.model.image_size
        if tuple(train_set.image_shape) != (side, side):
            raise TrainingError(f"{train_set.name} has {train_set.image_shape[0]}x"
                                f"{train_set.image_shape[1]} images but the config's networks "
                                f"take {side}x{side} (model.image_size); use a preset for "
                                "this dataset or --set model.image_size=...")
        self.check_config(config)
        self.config = config
        self.train_set = train_set
        self.device = self.training_device(config)
        # What the run trains in, recorded in its config (config.json, checkpoints), so
        # that a resumed run keeps it on any machine.
        config.precision = resolve_precision(config.precision, self.device, self.precisions)
        if config.cuda_graph and self.device.type != "cuda":
            raise TrainingError(f"cuda_graph=true records the step as a CUDA graph, but the "
                                f"run trains on {self.device} (device={config.device!r}); "
                                "use a CUDA device or cuda_graph=false")

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """`ConfigError` for a setting of `config` this method does not implement.

        Run when a config is resolved (gaussmem.presets.resolve) and again when training
        starts, so that a config merged on resume is checked too."""
        method = config.method
        if config.loss.memory_term not in cls.memory_terms:
            raise ConfigError(f"loss.memory_term={config.loss.memory_term!r} is not "
                              f"implemented for method {method!r}, which has its own loss")
        if config.precision != "auto" and config.precision not in cls.precisions:
            raise ConfigError(f"precision={config.precision!r} is not implemented for "
                              f"method {method!r}, which trains in {cls.precisions[0]}")
        if config.augment.enabled and not cls.augments:
            raise ConfigError(f"augment.* is not implemented for method {method!r}, which "
                              "trains on the plain images")
        if config.cuda_graph and not cls.records_cuda_graph:
            raise ConfigError(f"cuda_graph=true is not implemented for method={method!r}; "
                              "only the MA-VAE's step is recorded")

    @classmethod
    def training_device(cls, config: TrainConfig) -> torch.device:
        """Where a run of `config` trains: its device where the method supports that
        device type, the CPU for "auto" where it does not; otherwise an error."""
        device = resolve_device(config.device)
        if device.type in cls.device_types:
            return device
        if config.device == "auto":
            return torch.device("cpu")
        raise TrainingError(f"device {config.device!r}: method {config.method!r} trains on "
                            f"{' or '.join(cls.device_types)} only; use device 'cpu' "
                            "or 'auto'")

    @property
    @abstractmethod
    def images_per_step(self) -> int:
        """Training images one step encodes (for images/s)."""

    @abstractmethod
    def train_step(self, measure: bool = False) -> dict[str, torch.Tensor]:
        """One optimizer step at the learning rate the loop has set; returns scalar loss
        terms (`loss` included). `measure`: also compute costlier diagnostics (log steps).
        """

    @abstractmethod
    def classifier(self) -> FewShotClassifier:
        """`evaluated_model` behind the classifier interface (for validation)."""

    @property
    def weight_average(self) -> WeightAverage | None:
        """The moving average of `model` (`optim.ema_decay`), or None.

        Built on first use, because subclasses set `model` after this class's __init__.
        """
        decay = self.config.optim.ema_decay
        if decay and self._average is None:
            self._average = WeightAverage(self.model, decay, self._statistics_images,
                                          self.batch_norm_pass)
        return self._average

    @property
    def evaluated_model(self) -> nn.Module:
        """The weights validation, checkpoints' `model` and classifiers use."""
        average = self.weight_average
        return self.model if average is None else average.module

    def batch_norm_pass(self, network: nn.Module, images: torch.Tensor) -> None:
        """Run `network` on `images` through every BatchNorm layer it has, drawing no
        random numbers (for a weight average's statistics)."""
        network(images)

    def _statistics_images(self) -> torch.Tensor:
        """Two drawings each of up to `STATISTICS_CLASSES` training classes, drawn with a
        generator of their own so that the training run's draws are untouched (stream
        [seed, 2]: the sampler draws from `seed`, the distortions from [seed, 1])."""
        rng = np.random.Generator(np.random.PCG64([self.config.seed, 2]))
        n_classes = min(STATISTICS_CLASSES, self.train_set.n_classes)
        classes = rng.choice(self.train_set.n_classes, n_classes, replace=False)
        return images_to_tensor(self.train_set.draw_distinct(classes, 2, rng),
                                self.config.channels_last, self.device)

    def state_dict(self) -> dict[str, Any]:
        average = self.weight_average
        return {"model": self.evaluated_model.state_dict(),
                "trained_model": None if average is None else self.model.state_dict(),
                "optimizer": portable_optimizer_state(self.optimizer.state_dict()),
                "memory": None if self.memory is None else self.memory.state_dict(),
                "sampler": self.sampler.state_dict()}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        average = self.weight_average
        if average is None:
            self.model.load_state_dict(checkpoint["model"])
        elif checkpoint.get("trained_model") is None:
            raise TrainingError("the checkpoint was trained without optim.ema_decay, so it "
                                "holds no weight average; resume it with the config it was "
                                "trained with")
        else:
            self.model.load_state_dict(checkpoint["trained_model"])
            average.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.config.cuda_graph:
            make_capturable_(self.optimizer, self.device)
        if self.memory is not None:
            self.memory.load_state_dict(checkpoint["memory"])
        self.sampler.load_state_dict(checkpoint["sampler"])

    @property
    def generative_model(self) -> nn.Module | None:
        """The network a run's figures draw with (a generative method's VAE); None for a
        method that only classifies."""
        return None

    def backward_and_step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backpropagate `loss`, clip the global gradient norm, step; returns the norm."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              self.config.optim.grad_clip)
        self.optimizer.step()
        average = self.weight_average
        if average is not None:
            average.update(self.model)
        return norm

    def adam(self) -> torch.optim.Adam:
        """Adam over `self.model` with the config's lr, weight decay and epsilon
        (capturable by a CUDA graph where `cuda_graph` asks for one)."""
        optim = self.config.optim
        options = {"weight_decay": optim.weight_decay, "eps": optim.adam_eps}
        if self.config.cuda_graph:
            return capturable_adam(self.model.parameters(), optim.lr, self.device, **options)
        return torch.optim.Adam(self.model.parameters(), lr=optim.lr, **options)


def embed_in_batches(encoder: nn.Module, images: torch.Tensor, batch_size: int,
                     channels_last: bool) -> torch.Tensor:
    """`encoder` over `images (n, C, H, W)` in batches: `(n, d)` float32 on the CPU,
    wherever the encoder runs (the episode logic runs on the CPU). Small batches bound
    activation memory for 400-way episodes and suit a CPU (results/speed/speed-cpu.json)."""
    device = module_device(encoder)
    outputs = []
    for batch in images.split(batch_size):
        batch = batch.to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        outputs.append(encoder(batch).float().cpu())
    return torch.cat(outputs)
