"""Prototypical Networks (Snell et al. 2017) behind the classifier interface.

A class is the mean of its support embeddings (its prototype); a query scores
`-||f(x) - c_k||^2` against each prototype (squared Euclidean distance, which Snell et
al. found better than cosine). Training: one `n_way`-way episode per step with `n_shot`
support and `images_per_class - n_shot` query drawings per class, cross-entropy over
the negative distances. The encoder is the Conv4 trunk (64-d on 28x28).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gaussmem.config import ProtoNetConfig, TrainConfig, from_dict
from gaussmem.data.datasets import FewShotDataset
from gaussmem.data.training_sampler import TrainingClassSampler, images_to_tensor
from gaussmem.methods.base import FewShotClassifier
from gaussmem.methods.registry import register_method, register_training
from gaussmem.methods.training import MethodTraining, embed_in_batches
from gaussmem.models.encoders import Conv4Backbone

DEFAULT_EMBED_BATCH = 128


def conv4_encoder(config: ProtoNetConfig, channels_last: bool, image_size: int = 28
                  ) -> Conv4Backbone:
    encoder = Conv4Backbone(hidden_channels=config.hidden_channels, n_blocks=config.n_blocks,
                            image_size=image_size)
    return encoder.to(memory_format=torch.channels_last) if channels_last else encoder


def squared_distances(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """`(n_query, n_points)` squared Euclidean distances of `(n_query, d)`, `(n_points, d)`,
    as one GEMM (|q|^2 - 2 q.p + |p|^2, clamped at 0 against rounding)."""
    cross = queries @ points.T
    return (queries.square().sum(1, keepdim=True) - 2 * cross
            + points.square().sum(1)[None, :]).clamp_min(0)


def split_episode(embeddings: torch.Tensor, n_way: int, n_shot: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drawing-major `(images_per_class * n_way, d)` -> support `(n_shot * n_way, d)`,
    queries `(n_query * n_way, d)` and query labels `(n_query * n_way,)` in 0..n_way-1.
    Support row `s * n_way + c` and query row `q * n_way + c` are drawings of class c."""
    support = embeddings[: n_shot * n_way]
    queries = embeddings[n_shot * n_way:]
    labels = torch.arange(n_way, device=embeddings.device).repeat(len(queries) // n_way)
    return support, queries, labels


def prototypical_loss(embeddings: torch.Tensor, n_way: int, n_shot: int
                      ) -> dict[str, torch.Tensor]:
    """Snell et al.'s episode loss (their eq. 2): cross-entropy of softmax(-d(f(x), c_k))."""
    support, queries, labels = split_episode(embeddings, n_way, n_shot)
    prototypes = support.view(n_shot, n_way, -1).mean(0)
    logits = -squared_distances(queries, prototypes)
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(1) == labels).float().mean().detach()
    return {"loss": loss, "accuracy": accuracy}


@register_method("protonet")
class PrototypicalNetwork(FewShotClassifier):
    """Conv4 embeddings, per-label running sums; scores are -squared distances."""

    def __init__(self, encoder: nn.Module, *, embed_batch_size: int = DEFAULT_EMBED_BATCH,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.embed_batch_size = embed_batch_size
        self.channels_last = channels_last
        self._sums: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """`(n, C, H, W)` -> `(n, d)`."""
        return embed_in_batches(self.encoder, images, self.embed_batch_size,
                                self.channels_last)

    def reset(self) -> None:
        self._sums = self._counts = None

    @torch.no_grad()
    def add_support_embeddings(self, support_embeddings: torch.Tensor,
                               support_labels: torch.Tensor) -> None:
        n_labels = int(support_labels.max()) + 1
        if self._sums is None:
            self._sums = support_embeddings.new_zeros(0, support_embeddings.shape[1])
            self._counts = support_embeddings.new_zeros(0)
        assert self._counts is not None
        if n_labels > len(self._sums):  # grow to the largest label seen
            grow = n_labels - len(self._sums)
            self._sums = torch.cat([self._sums, self._sums.new_zeros(grow, self._sums.shape[1])])
            self._counts = torch.cat([self._counts, self._counts.new_zeros(grow)])
        self._sums.index_add_(0, support_labels, support_embeddings)
        self._counts.index_add_(0, support_labels, torch.ones_like(
            support_labels, dtype=support_embeddings.dtype))

    @torch.no_grad()
    def predict_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        """`(n_query, n_labels)`: -squared distance to each prototype; -inf if none."""
        if self._sums is None or self._counts is None:
            return torch.full((len(query_embeddings), 1), -torch.inf)
        seen = self._counts > 0
        prototypes = self._sums / self._counts.clamp_min(1)[:, None]
        scores = -squared_distances(query_embeddings, prototypes)
        return scores.masked_fill(~seen[None, :], -torch.inf)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> PrototypicalNetwork:
        config = from_dict(TrainConfig, checkpoint["config"])
        encoder = conv4_encoder(config.protonet, config.channels_last, config.model.image_size)
        encoder.load_state_dict(checkpoint["model"])
        return cls(encoder, channels_last=config.channels_last).eval()


@register_training("protonet")
class ProtoNetTraining(MethodTraining):
    """One `n_way`-way episode per step (`episodes.batch_episodes` is ignored: 1)."""

    def __init__(self, config: TrainConfig, train_set: FewShotDataset) -> None:
        super().__init__(config, train_set)
        self.model = self.build_model()
        self.optimizer = self.adam()
        episodes = config.episodes
        self.sampler = TrainingClassSampler(train_set, episodes.n_way,
                                            episodes.images_per_class, 1, seed=config.seed)

    def build_model(self) -> nn.Module:
        return conv4_encoder(self.config.protonet, self.config.channels_last,
                             self.config.model.image_size)

    @property
    def images_per_step(self) -> int:
        return self.config.episodes.n_way * self.config.episodes.images_per_class

    def episode_embeddings(self) -> torch.Tensor:
        """Next episode's images through the network: `(images_per_class * n_way, d)`."""
        images = images_to_tensor(self.sampler.next_batch(), self.config.channels_last)
        return self.model(images)

    def episode_loss(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        episodes = self.config.episodes
        return prototypical_loss(embeddings, episodes.n_way, episodes.n_shot)

    def train_step(self, measure: bool = False) -> dict[str, torch.Tensor]:
        terms = self.episode_loss(self.episode_embeddings())
        terms["grad_norm"] = self.backward_and_step(terms["loss"])
        return terms

    def classifier(self) -> FewShotClassifier:
        return PrototypicalNetwork(self.evaluated_model, channels_last=self.config.channels_last)
