"""How the memory-augmented VAE trains (Tseran & Harada 2017, section 3.2).

Each training episode draws `n_classes = batch_episodes * n_way` classes (the parallel
episodes of a batch share one memory, so the model is trained to tell all of them
apart), clears the memory, writes `memory_support` drawings of each class into it (no
gradient) and runs `steps_per_episode` steps. A step:

1. takes `images_per_class` drawings of every class that the episode has not used yet:
   `(P * C, 1, 28, 28)`, each randomly rotated, scaled and shifted where `augment.*`
   asks for it;
2. encodes them (networks under bfloat16 autocast when `precision` asks for it),
   samples z_c and z_s, decodes x from (z_c, z_s) and from (z_c of the
   class's other drawing, z_s) (the paper's two generative terms);
3. looks up, against the memory as it stands (constants), each query's nearest entry
   with its label (positive) and with another label (negative) -> triplet term (or,
   with `loss.memory_term = "softmax"`, scores it against every entry -> the memory
   softmax in the triplet's place);
4. takes one Adam step on the total loss (gradient clipped);
5. writes the step's content posteriors into the memory with the paper's rule
   (`GaussianMemory.update_`: merge into the nearest entry if its label is right, else
   create an entry).

Under torchrun (gaussmem.distributed) each rank takes its own disjoint share of the
episode's classes (the sampler draws every rank's and keeps its own), the networks are
wrapped in DistributedDataParallel (gradients averaged), and the memory stays one logical
memory: every write (the support and each step's) is all-gathered and applied on every
rank in the order one process holding all the classes would write it, so every rank
holds the same `(world x B x N)`-way memory and scores its queries against all of it
(MoCo's shared queue is the precedent). The memory is a module of its own, outside the
DDP wrapper, so DDP never broadcasts it. BatchNorm normalizes each rank's share of the
batch (SyncBatchNorm has no CPU kernel). Its running statistics are exponential moving
averages, linear in the batch statistics, so the mean over ranks of each rank's average
is the average of the ranks' mean statistics: the training loop averages them over the
ranks only before it validates or writes a checkpoint (gaussmem.train), not every step.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gaussmem.config import TrainConfig
from gaussmem.data.augmentation import RandomAffine, distort
from gaussmem.data.datasets import FewShotDataset
from gaussmem.data.training_sampler import TrainingClassSampler, images_to_tensor
from gaussmem.distributed import current
from gaussmem.errors import ConfigError, TrainingError
from gaussmem.losses import (
    MEMORY_TERMS,
    log_similarity,
    memory_softmax_loss,
    scaled_similarity,
    total_loss,
)
from gaussmem.memory import GaussianMemory
from gaussmem.methods.mavae import MemoryAugmentedVAE
from gaussmem.methods.registry import register_training
from gaussmem.methods.training import MethodTraining
from gaussmem.models.vae import DiagonalGaussian, GaussianVAE
from gaussmem.plumbing.cuda_graphs import CapturedStep
from gaussmem.plumbing.precision import PRECISIONS, autocast

#: DDP's option to skip the broadcast of buffers before each forward: renamed in torch
#: 2.13 (the old name warns there), absent under the new name before.
_NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers"
                           in inspect.signature(DistributedDataParallel).parameters
                           else {"broadcast_buffers": False})


class StepNetworks(nn.Module):
    """The VAE's part of a step as one `forward`, the call DistributedDataParallel
    wraps (DDP averages the gradients of what its wrapped module's forward computed)."""

    def __init__(self, vae: GaussianVAE, cross_style: str = "own",
                 regenerate: str | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.cross_style = cross_style
        self.regenerate = regenerate

    def forward(self, images: torch.Tensor, n_classes: int
                ) -> tuple[torch.Tensor, ...]:
        """`images (P * C, 1, H, W)` drawing-major -> content mean and log-variance,
        style mean and log-variance, and decoder logits `(2 * P * C, 1, H, W)`: x from
        its own (z_c, z_s), then from (z_c of the class's other drawing, z_s of
        `cross_style`: x's own, or that of the same drawing of the previous class).
        With `regenerate` (what that term trains, `loss.consistency_trains`), also the
        content mean and log-variance of the drawings decoded from each x's z_c and a z_s
        drawn from the prior, encoded again (for `loss.content_consistency`); for
        "decoder", from a detached z_c and by the encoder's weights held constant."""
        vae = self.vae
        content, style = vae.encode(images)
        z_content = vae.content_for_decoder(content)
        z_style = vae.reparameterize(style)
        # Rolling by n_classes pairs drawing p of each class with drawing p-1 of the
        # same class: x is decoded from z_c of x' (same class).
        z_other_content = z_content.roll(n_classes, dims=0)
        # Rolling by one pairs drawing p of class c with drawing p of class c-1 (of the
        # last class, drawing p-1): always another class when there are two or more.
        z_cross_style = z_style.roll(1, dims=0) if self.cross_style == "other_class" else z_style
        if self.regenerate is None:
            logits = vae.decode(torch.cat([z_content, z_other_content]),
                                torch.cat([z_style, z_cross_style]))
            return content.mean, content.log_var, style.mean, style.log_var, logits
        decoder_only = self.regenerate == "decoder"
        z_regenerated_from = z_content.detach() if decoder_only else z_content
        logits = vae.decode(torch.cat([z_content, z_other_content, z_regenerated_from]),
                            torch.cat([z_style, z_cross_style, torch.randn_like(z_style)]))
        logits, generated_logits = logits.split([2 * len(images), len(images)])
        generated = torch.sigmoid(generated_logits)
        with frozen_batch_norm_statistics(vae):
            regenerated = (encode_content_frozen(vae, generated) if decoder_only
                           else vae.encode_content(generated))
        return (content.mean, content.log_var, style.mean, style.log_var, logits,
                regenerated.mean, regenerated.log_var)


def encode_content_frozen(vae: GaussianVAE, images: torch.Tensor) -> DiagonalGaussian:
    """q(z_c | images) by `vae`'s encoder with its weights held constant: the gradient
    reaches `images` (and what produced them), never the encoder's weights."""
    def constants(module: nn.Module) -> dict[str, torch.Tensor]:
        return {name: value.detach() for name, value in module.named_parameters()}

    features = torch.func.functional_call(vae.backbone, constants(vae.backbone), (images,))
    return DiagonalGaussian(*torch.func.functional_call(
        vae.content_head, constants(vae.content_head), (features,)))


def step_networks(vae: GaussianVAE, config: TrainConfig) -> StepNetworks:
    """The step's networks as `config.loss` asks for them."""
    return StepNetworks(vae, config.loss.cross_style,
                        regenerate=(config.loss.consistency_trains
                                    if config.loss.content_consistency > 0 else None))


@contextlib.contextmanager
def frozen_batch_norm_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of `module` normalize by the batch as in training but leave their
    running statistics as they are: generated drawings must not shift the statistics
    that real drawings are encoded with at evaluation."""
    norms = [layer for layer in module.modules()
             if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


def forward_losses(vae: GaussianVAE, memory: GaussianMemory, images: torch.Tensor,
                   labels: torch.Tensor, n_classes: int, config: TrainConfig,
                   autocast_cache: bool = True, networks: nn.Module | None = None
                   ) -> tuple[dict[str, torch.Tensor], Any]:
    """Loss terms and diagnostics of one step; returns `(terms, content posterior)`.

    `images (P * C, 1, H, W)` drawing-major, `labels (P * C,)` the classes' ids in the
    memory. `autocast_cache`: off inside a CUDA graph, which must not record autocast's
    cache of casted weights. `networks`: `StepNetworks(vae)`, or its DDP wrapper.
    Diagnostic terms (no gradient): `accuracy` (nearest entry has the query's label),
    `positive_rate` (an entry with the query's label exists), `sim_positive`,
    `sim_negative` (means over queries with one).
    """
    networks = step_networks(vae, config) if networks is None else networks
    with autocast(config.precision, images.device, cache=autocast_cache):
        # The posteriors come out float32 whatever the precision (GaussianHead).
        content_mean, content_log_var, style_mean, style_log_var, logits, *regenerated = (
            networks(images, n_classes))
    content = DiagonalGaussian(content_mean, content_log_var)
    regenerated_content = DiagonalGaussian(*regenerated) if regenerated else None
    style = DiagonalGaussian(style_mean, style_log_var)
    self_logits, cross_logits = logits.float().chunk(2)
    likelihood = vae.config.likelihood

    variance = content.var
    positive = memory.nearest_with_label(content.mean, variance, labels)
    negative = memory.nearest_with_other_label(content.mean, variance, labels)
    similarity = config.similarity
    kwargs = {"kind": similarity.kind, "dim": content.mean.shape[1],
              "temperature": similarity.temperature}
    # Divergence +inf (no entry) gives similarity exactly 0 and no gradient.
    sim_positive = scaled_similarity(positive.divergence, **kwargs)
    sim_negative = scaled_similarity(negative.divergence, **kwargs)
    memory_softmax = None
    if config.loss.memory_term == "softmax":
        # Beyond the paper: every entry competes, not just the nearest of each side.
        divergence, entry_labels = memory.divergences_to_entries(content.mean, variance)
        memory_softmax = memory_softmax_loss(log_similarity(divergence, **kwargs),
                                             entry_labels[None, :] == labels[:, None])
    terms = total_loss(sim_positive=sim_positive, sim_negative=sim_negative,
                       content=content, style=style, self_logits=self_logits,
                       cross_logits=cross_logits, images=images, weights=config.loss,
                       likelihood=likelihood, log_scale=vae.log_scale,
                       memory_softmax=memory_softmax, regenerated_content=regenerated_content)
    with torch.no_grad():
        has_positive = positive.slots >= 0
        has_negative = negative.slots >= 0
        terms["accuracy"] = (has_positive & (positive.divergence < negative.divergence)
                             ).float().mean()
        terms["positive_rate"] = has_positive.float().mean()
        terms["sim_positive"] = masked_mean(sim_positive, has_positive)
        terms["sim_negative"] = masked_mean(sim_negative, has_negative)
        terms["divergence_positive"] = masked_mean(positive.divergence, has_positive)
        terms["content_variance"] = variance.mean()
    return terms, content


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask`; 0 when the mask is empty."""
    return torch.where(mask, values, 0).sum() / mask.sum().clamp_min(1)


@register_training("mavae")
class MAVAETraining(MethodTraining):
    """GaussianVAE + Adam + the episode's GaussianMemory + the class sampler."""

    postfix_terms = ("loss", "triplet", "generative_self", "accuracy")
    device_types = ("cpu", "cuda")
    distributed = True
    memory_terms = MEMORY_TERMS
    precisions = PRECISIONS
    augments = True
    records_cuda_graph = True

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """The shared checks, and a CUDA graph only of the step it records: the
        triplet's, without a weight average."""
        super().check_config(config)
        if config.cuda_graph and (config.loss.memory_term != "triplet"
                                  or config.optim.ema_decay):
            raise ConfigError("cuda_graph=true records the MA-VAE's triplet step without a "
                              f"weight average; got loss.memory_term="
                              f"{config.loss.memory_term!r}, "
                              f"optim.ema_decay={config.optim.ema_decay}")

    def __init__(self, config: TrainConfig, train_set: FewShotDataset) -> None:
        super().__init__(config, train_set)
        self.ranks = ranks = current()
        if ranks.enabled and self.device.type == "cuda":
            # Each rank trains on the GPU torchrun's LOCAL_RANK gave it
            # (gaussmem.distributed.process_group), whatever index config.device names.
            self.device = torch.device("cuda", torch.cuda.current_device())
        if ranks.enabled and config.cuda_graph:
            raise TrainingError("cuda_graph=true records one process's step; under torchrun "
                                "the step gathers memory writes across ranks: set "
                                "cuda_graph=false")
        vae = GaussianVAE(config.model).to(self.device)
        if config.channels_last:
            vae = vae.to(memory_format=torch.channels_last)
        self.model = vae
        self.networks: nn.Module = step_networks(vae, config)
        if ranks.enabled:
            # Construction broadcasts rank 0's weights; the memory is not in here, so
            # DDP never overwrites it. BatchNorm's statistics are averaged before
            # validation and checkpoints (gaussmem.train), never broadcast from rank 0.
            self.networks = DistributedDataParallel(
                self.networks, device_ids=[self.device] if self.device.type == "cuda"
                else None, **_NO_FORWARD_BUFFER_SYNC)
        self.optimizer = self.adam()
        episodes = config.episodes
        # One logical memory holds every rank's classes.
        self.memory = GaussianMemory(episodes.resolved_memory_capacity * ranks.world_size,
                                     config.model.content_dim, seed=config.seed
                                     ).to(self.device)
        self.sampler = TrainingClassSampler(train_set, episodes.n_classes,
                                            episodes.images_per_class,
                                            episodes.steps_per_episode, seed=config.seed,
                                            support=episodes.memory_support,
                                            rank=ranks.rank, world_size=ranks.world_size)
        # Every rank draws the distortions of the whole global batch and keeps its own,
        # as it does the drawings: the same stream on every rank, as in one process.
        self.augment = (RandomAffine(config.augment, config.seed)
                        if config.augment.enabled else None)
        # The memory ids of the step's drawing-major batch: the same every step, unique
        # across ranks (rank r's class c is r * C + c).
        self.labels = self.rank_labels(episodes.images_per_class)
        self.captured_step = CapturedStep(self.device_step) if config.cuda_graph else None

    def rank_labels(self, drawings_per_class: int) -> torch.Tensor:
        """`(drawings_per_class * C,)` memory ids of a drawing-major batch of this rank's
        C classes."""
        n_classes = self.sampler.n_classes
        first = self.ranks.rank * n_classes
        return torch.arange(first, first + n_classes, device=self.device).repeat(
            drawings_per_class)

    @property
    def images_per_step(self) -> int:
        return self.sampler.n_classes * self.config.episodes.images_per_class

    def train_step(self, measure: bool = False) -> dict[str, torch.Tensor]:
        new_episode = self.sampler.new_episode
        images = self.to_training_images(self.sampler.next_batch())
        if new_episode:
            self.memory.reset_()
            if self.sampler.support:
                self.write_support_(self.to_training_images(self.sampler.episode_support()))
        if self.captured_step is not None:
            # The recorded step makes no second backward pass: `measure` is not honoured.
            return self.captured_step(images, self.labels)
        return self.device_step(images, self.labels, measure)

    def to_training_images(self, drawings: np.ndarray) -> torch.Tensor:
        """uint8 drawing-major `(P, C, H, W)` -> the device's float batch, distorted
        where `augment.*` asks for it (this rank's share of the global batch's
        distortions, `(P, world, C)` drawing-major)."""
        images = images_to_tensor(drawings, self.config.channels_last, self.device)
        if self.augment is None:
            return images
        rows, n_classes = drawings.shape[:2]
        world, rank = self.ranks.world_size, self.ranks.rank
        matrices = self.augment.matrices(rows * world * n_classes)
        mine = matrices.reshape(rows, world, n_classes, 2, 3)[:, rank].reshape(-1, 2, 3)
        return distort(images, torch.from_numpy(np.ascontiguousarray(mine)))

    @torch.no_grad()
    def write_(self, mean: torch.Tensor, var: torch.Tensor, labels: torch.Tensor) -> None:
        """The paper's write of drawing-major `(P * C, d)` posteriors into the memory;
        under DDP, every rank's writes, in the order one process holding all the ranks'
        classes would write them (`(P, world, C)` drawing-major), on every rank."""
        if self.ranks.world_size > 1:
            rows = len(labels) // self.sampler.n_classes
            # One collective instead of three: float64 holds the float32 keys and the
            # integer labels exactly.
            packed = torch.cat([mean.double(), var.double(), labels.double()[:, None]], 1)
            gathered = self.ranks.gather_rows(packed)  # (world, P * C, 2 d + 1)
            shaped = gathered.unflatten(1, (rows, self.sampler.n_classes))
            every_rank = shaped.transpose(0, 1).flatten(0, 2)
            dim = mean.shape[1]
            mean, var, labels = (every_rank[:, :dim].to(mean.dtype),
                                 every_rank[:, dim:2 * dim].to(var.dtype),
                                 every_rank[:, 2 * dim].to(labels.dtype))
        self.memory.update_(mean, var, labels)

    @torch.no_grad()
    def write_support_(self, images: torch.Tensor) -> None:
        """Write an episode's support drawings `(S * C, 1, H, W)` into the cleared memory
        with the paper's rule, so the episode's first queries have positives."""
        with autocast(self.config.precision, images.device):
            content = self.model.encode_content(images)
        self.write_(content.mean, content.var,
                    self.rank_labels(len(images) // self.sampler.n_classes))

    def device_step(self, images: torch.Tensor, labels: torch.Tensor, measure: bool = False
                    ) -> dict[str, torch.Tensor]:
        """Steps 2-5 of the module docstring: device work only, no host syncs, so that
        `cuda_graph` can record it (gaussmem.plumbing.cuda_graphs)."""
        terms, content = forward_losses(self.model, self.memory, images, labels,
                                        self.sampler.n_classes, self.config,
                                        autocast_cache=self.captured_step is None,
                                        networks=self.networks)
        if measure:
            # The risk the issue names: exp(-SKL) ~ 0 everywhere makes the triplet
            # constant. Its gradient with respect to the content posterior says whether.
            grads = torch.autograd.grad(terms["triplet"], [content.mean, content.log_var],
                                        retain_graph=True, allow_unused=True)
            norm = sum(float(g.square().sum()) for g in grads if g is not None)
            terms["triplet_grad_norm"] = torch.tensor(math.sqrt(norm))
        terms["grad_norm"] = self.backward_and_step(terms["loss"])
        self.write_(content.mean.detach(), content.var.detach(), labels)
        return terms

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["augment"] = None if self.augment is None else self.augment.state_dict()
        # The memory's size and the episodes' shape depend on it (see load_state_dict).
        state["world_size"] = self.ranks.world_size
        return state

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Continue where the checkpoint stopped; trained on another number of ranks,
        from the start of its current episode (the memory and the episode's classes
        are sized by the ranks), with this launch's global batch."""
        if int(checkpoint.get("world_size", 1)) != self.ranks.world_size:
            checkpoint = {**checkpoint, "memory": self.memory.state_dict()}
            super().load_state_dict(checkpoint)
            self.sampler.restart_episode()
        else:
            super().load_state_dict(checkpoint)
        if self.augment is not None:
            if checkpoint.get("augment") is None:
                raise TrainingError("the checkpoint was trained without augment.* "
                                    "distortions; resume it with the config it was "
                                    "trained with")
            self.augment.load_state_dict(checkpoint["augment"])

    def batch_norm_pass(self, network: nn.Module, images: torch.Tensor) -> None:
        """Encode and decode the posterior means: the decoder's BatchNorm layers see
        codes without drawing a sample (which would move the global generator)."""
        posteriors = network.encode(images)
        network.decode(posteriors.content.mean, posteriors.style.mean)

    def classifier(self) -> MemoryAugmentedVAE:
        return MemoryAugmentedVAE(self.evaluated_model, channels_last=self.config.channels_last)

    @property
    def generative_model(self) -> GaussianVAE:
        return self.evaluated_model
