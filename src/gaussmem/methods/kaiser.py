"""Kaiser et al. 2017, "Learning to Remember Rare Events", behind the classifier interface.

Their memory holds unit-norm keys with labels; a query is the normalised embedding and
reads the label of the key with the largest cosine similarity. The slot policy (oldest
slot with age noise, ages, batch writes) is `SlotMemory`'s, shared with the paper's
Gaussian memory; only the key form differs: `KeyMemory` stores points, scores by cosine
and merges by `normalize(key + query)`.

Training (as their code, tensorflow/models research/learning_to_remember_rare_events):
`batch_episodes` parallel episodes share one memory, cleared at each episode's start;
each step shows one image per parallel episode, then
1. loss: with the top-`choose_k` keys by similarity, `relu(s_neg - s_pos + alpha) - alpha`
   where s_pos is the similarity to the nearest key with the query's label (their
   hint; if none is in the top k, their code falls back to the label's most recently
   written key, we to its nearest key anywhere in memory; 0 if the label has none) and
   s_neg to the nearest key with another label among the top k (0 if none);
2. one Adam step (global-norm clip 5);
3. memory update with the (dropout) query: if the top-1 key has the right label, it
   becomes normalize(key + query) and its age 0; otherwise the query is written to the
   oldest slot (ages + uniform noise in [-age_noise, age_noise]) with its label.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gaussmem.config import KaiserConfig, TrainConfig, from_dict
from gaussmem.data.datasets import FewShotDataset
from gaussmem.data.training_sampler import StreamSampler, images_to_tensor
from gaussmem.errors import TrainingError
from gaussmem.methods.base import FewShotClassifier
from gaussmem.methods.protonet import DEFAULT_EMBED_BATCH
from gaussmem.methods.registry import register_method, register_training
from gaussmem.methods.training import MethodTraining, embed_in_batches
from gaussmem.models.encoders import Conv4Backbone
from gaussmem.slot_memory import NOT_FOUND, SlotMemory, put_rows_

ENCODERS = ("kaiser", "conv4")


class KaiserEncoder(nn.Module):
    """Their LeNet-style embedder: [conv3x3-64, ReLU] x 2, maxpool, [conv3x3-128, ReLU]
    x 2, maxpool, linear -> `key_dim`; no batch norm. `(n, 1, 28, 28)` -> `(n, key_dim)`.
    PyTorch's default init replaces their truncated normal (std 0.1)."""

    def __init__(self, key_dim: int, image_size: int = 28, width: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2))
        self.head = nn.Linear(2 * width * (image_size // 4) ** 2, key_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images).flatten(1))


class Conv4KeyEncoder(nn.Module):
    """The Conv4 trunk + linear -> `key_dim` (a cheaper, BN-stabilised alternative)."""

    def __init__(self, key_dim: int, image_size: int = 28) -> None:
        super().__init__()
        self.trunk = Conv4Backbone(image_size=image_size)
        self.head = nn.Linear(self.trunk.out_features, key_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def kaiser_encoder(config: KaiserConfig, channels_last: bool, image_size: int = 28
                   ) -> nn.Module:
    if config.encoder not in ENCODERS:
        raise TrainingError(f"kaiser.encoder must be one of {ENCODERS}, got "
                            f"{config.encoder!r}")
    encoder = (KaiserEncoder(config.key_dim, image_size) if config.encoder == "kaiser"
               else Conv4KeyEncoder(config.key_dim, image_size))
    return encoder.to(memory_format=torch.channels_last) if channels_last else encoder


class KeyMemory(SlotMemory):
    """Unit-norm point keys `(capacity, key_dim)` addressed by cosine similarity.

    Scores for the shared search are `-cos` (lower is nearer); merges are
    `normalize(key + sum of merged queries)` (order-free; equal to Kaiser's update when a
    slot gets one merge per batch, which is the case in their training).
    """

    keys: torch.Tensor

    def __init__(self, capacity: int, key_dim: int, *, age_noise: float = 0.0,
                 seed: int | None = 0) -> None:
        super().__init__(capacity, age_noise=age_noise, seed=seed)
        self.key_dim = key_dim
        self.register_buffer("keys", torch.zeros(capacity, key_dim))

    def _empty_slot_values(self) -> dict[str, Any]:
        return {**super()._empty_slot_values(), "keys": 0.0}

    def _lift_query_keys(self, keys: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.normalize(keys[0], dim=1)

    def _score_block(self, lifted_queries: torch.Tensor, query_rows: slice, slot_rows: slice,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        scores = -(lifted_queries[query_rows] @ self.keys[slot_rows].T)
        return scores.masked_fill_(~self.valid[None, slot_rows], torch.inf)

    def _store_keys_(self, slots: torch.Tensor, keys: tuple[torch.Tensor, ...],
                     stores: torch.Tensor) -> None:
        put_rows_(self.keys, slots, F.normalize(keys[0], dim=1), stores)

    def _merge_keys_(self, slots: torch.Tensor, keys: tuple[torch.Tensor, ...],
                     merges: torch.Tensor) -> None:
        weight = merges.to(self.keys.dtype)
        totals = self.keys.index_add(0, slots, F.normalize(keys[0], dim=1) * weight[:, None])
        merged = weight.new_zeros(self.capacity).index_add_(0, slots, weight)
        put_rows_(self.keys, slots, F.normalize(totals[slots], dim=1), merged[slots] > 0)

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """The `k` most similar slots per query `(n, key_dim)`: `(n, k)`, NOT_FOUND pads."""
        return self._search_slots((queries.detach(),), k)

    def nearest_with_label(self, queries: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Most similar slot holding each query's label, `(n,)`; NOT_FOUND if none."""
        return self._search_slots((queries.detach(),), 1, labels, same_label=True)[:, 0]

    @torch.no_grad()
    def update_(self, queries: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Kaiser's write, in place: merge into the top-1 slot if its label is right, else
        write to the oldest slot. `queries (b, key_dim)`, `labels (b,)`; returns slots."""
        queries = F.normalize(queries.detach().to(self.keys), dim=1)
        nearest = self.search(queries, 1)[:, 0]
        hits = (nearest != NOT_FOUND) & (self.labels[nearest.clamp_min(0)] == labels)
        merge_slots = torch.where(hits, nearest, NOT_FOUND)
        creator_of = torch.arange(len(labels), device=labels.device)
        return self._commit_batch_((queries,), labels, merge_slots, creator_of)

    def grown(self, capacity: int) -> KeyMemory:
        """A copy with `capacity` slots holding this memory's entries (compacted)."""
        grown = KeyMemory(capacity, self.key_dim, age_noise=self.age_noise, seed=self.seed)
        keep = self.valid.nonzero()[:, 0]
        with torch.no_grad():
            for name in ("keys", "labels", "counts", "ages", "valid"):
                getattr(grown, name)[: len(keep)] = getattr(self, name)[keep]
        return grown.to(self.keys.device)


def memory_loss(queries: torch.Tensor, labels: torch.Tensor, memory: KeyMemory,
                choose_k: int, alpha: float) -> dict[str, torch.Tensor]:
    """Kaiser's memory loss for unit-norm `queries (b, key_dim)` (differentiable) against
    the memory's keys (constants); see the module docstring. Returns `loss` and
    diagnostics: `accuracy` (top-1 label right), `positive_rate`."""
    top = memory.search(queries, choose_k)
    valid = top != NOT_FOUND
    top_labels = torch.where(valid, memory.labels[top.clamp_min(0)], NOT_FOUND)
    similarity = (queries[:, None, :] * memory.keys[top.clamp_min(0)]).sum(-1)
    negatives = valid & (top_labels != labels[:, None])
    sim_negative = torch.where(negatives.any(1),
                               similarity.masked_fill(~negatives, -torch.inf).amax(1), 0.0)
    positive = memory.nearest_with_label(queries, labels)
    has_positive = positive != NOT_FOUND
    sim_positive = torch.where(has_positive, (queries * memory.keys[positive.clamp_min(0)]
                                              ).sum(1), 0.0)
    loss = (F.relu(sim_negative - sim_positive + alpha) - alpha).mean()
    with torch.no_grad():
        accuracy = (valid[:, 0] & (top_labels[:, 0] == labels)).float().mean()
    return {"loss": loss, "accuracy": accuracy, "positive_rate": has_positive.float().mean(),
            "sim_positive": sim_positive.detach().mean(),
            "sim_negative": sim_negative.detach().mean()}


@register_method("kaiser")
class KaiserMemoryClassifier(FewShotClassifier):
    """Encoder + a fresh `KeyMemory` per episode (no age noise at evaluation).

    Support images are written with Kaiser's update rule (a fresh memory makes every
    support item its own key; in the online protocol, items merge into a correct top-1
    key). Scores: each label's largest cosine similarity; -inf for labels not in memory.
    """

    def __init__(self, encoder: nn.Module, key_dim: int, *,
                 embed_batch_size: int = DEFAULT_EMBED_BATCH, channels_last: bool = True
                 ) -> None:
        super().__init__()
        self.encoder = encoder
        self.key_dim = key_dim
        self.embed_batch_size = embed_batch_size
        self.channels_last = channels_last
        self.memory = KeyMemory(1, key_dim)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm keys `(n, key_dim)`."""
        features = embed_in_batches(self.encoder, images, self.embed_batch_size,
                                    self.channels_last)
        return F.normalize(features, dim=1)

    def reset(self) -> None:
        self.memory.reset_()

    @torch.no_grad()
    def add_support_embeddings(self, support_embeddings: torch.Tensor,
                               support_labels: torch.Tensor) -> None:
        needed = len(self.memory) + len(support_labels)
        if needed > self.memory.capacity:
            self.memory = self.memory.grown(max(needed, 2 * self.memory.capacity))
        self.memory.update_(support_embeddings, support_labels)

    @torch.no_grad()
    def predict_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        """`(n_query, n_labels)`: largest cosine similarity per label; -inf if none."""
        occupied = self.memory.valid.nonzero()[:, 0]
        labels = self.memory.labels[occupied]
        n_labels = int(labels.max()) + 1 if len(labels) else 1
        scores = torch.full((len(query_embeddings), n_labels), -torch.inf)
        if not len(occupied):
            return scores
        similarity = query_embeddings @ self.memory.keys[occupied].T
        index = labels[None, :].expand_as(similarity)
        return scores.scatter_reduce_(1, index, similarity, reduce="amax")

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> KaiserMemoryClassifier:
        config = from_dict(TrainConfig, checkpoint["config"])
        encoder = kaiser_encoder(config.kaiser, config.channels_last,
                                 config.model.image_size)
        encoder.load_state_dict(checkpoint["model"])
        return cls(encoder, config.kaiser.key_dim, channels_last=config.channels_last).eval()


@register_training("kaiser")
class KaiserTraining(MethodTraining):
    """Parallel episodes sharing one memory (see the module docstring).

    `episodes.n_way` classes per episode, `episodes.batch_episodes` parallel episodes,
    each class shown `episodes.images_per_class` times: an episode lasts
    `n_way * images_per_class` steps (`episodes.steps_per_episode` is not used).
    """

    postfix_terms = ("loss", "accuracy", "positive_rate")

    def __init__(self, config: TrainConfig, train_set: FewShotDataset) -> None:
        super().__init__(config, train_set)
        self.model = kaiser_encoder(config.kaiser, config.channels_last,
                                 config.model.image_size)
        self.optimizer = self.adam()
        episodes = config.episodes
        self.memory = KeyMemory(episodes.resolved_memory_capacity, config.kaiser.key_dim,
                                age_noise=config.kaiser.age_noise, seed=config.seed)
        self.sampler = StreamSampler(train_set, episodes.n_way, episodes.batch_episodes,
                                     episodes.images_per_class, seed=config.seed)

    @property
    def images_per_step(self) -> int:
        return self.config.episodes.batch_episodes

    def train_step(self, measure: bool = False) -> dict[str, torch.Tensor]:
        kaiser = self.config.kaiser
        if self.sampler.new_episode:
            self.memory.reset_()
        images, labels = self.sampler.next_batch()
        images = images_to_tensor(images[None], self.config.channels_last)
        labels = torch.from_numpy(labels)
        features = F.dropout(self.model(images), p=1.0 - kaiser.keep_prob,
                             training=self.model.training)
        queries = F.normalize(features, dim=1)
        terms = memory_loss(queries, labels, self.memory, kaiser.choose_k, kaiser.alpha)
        terms["grad_norm"] = self.backward_and_step(terms["loss"])
        self.memory.update_(queries.detach(), labels)
        return terms

    def classifier(self) -> FewShotClassifier:
        return KaiserMemoryClassifier(self.evaluated_model, self.config.kaiser.key_dim,
                                      channels_last=self.config.channels_last)
