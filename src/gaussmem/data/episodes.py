"""N-way K-shot episodes drawn from a `ClassImageSet` with the sampler's own RNG.

Because each sampler owns a seeded generator, `EpisodeSampler(test_set, 5, 1, 15,
seed=0)` yields the same episodes whatever the program did before: the fixed evaluation
set of the literature (say 1,000 episodes, seed 0) is a sampler, not a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gaussmem.data.class_images import ClassImageSet
from gaussmem.errors import EpisodeError


@dataclass(frozen=True)
class EpisodeIndices:
    """Which images form an episode, before any pixel is copied.

    `class_indices` is `(n_way,)` into the dataset's classes; `sample_indices` is
    `(n_way, n_shot + n_query)` into each class's samples, support first. A training loop
    that keeps the dataset on an accelerator gathers with these directly.
    """

    class_indices: np.ndarray
    sample_indices: np.ndarray


@dataclass(frozen=True)
class EpisodeSampleIds:
    """An episode as flat sample ids of its dataset (`dataset.sample_tensor(ids)` gives
    the pixels), class-major like `Episode`: `support_ids (n_way * n_shot,)`,
    `query_ids (n_way * n_query,)`, `class_indices (n_way,)`. An evaluation that caches
    per-sample embeddings indexes them with these ids instead of re-encoding pixels."""

    support_ids: np.ndarray
    query_ids: np.ndarray
    class_indices: np.ndarray

    @property
    def n_way(self) -> int:
        return len(self.class_indices)

    def support_labels(self) -> torch.Tensor:
        return torch.arange(self.n_way).repeat_interleave(len(self.support_ids) // self.n_way)

    def query_labels(self) -> torch.Tensor:
        return torch.arange(self.n_way).repeat_interleave(len(self.query_ids) // self.n_way)


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot task, class-major: all shots of class 0, then class 1, ...

    Attributes:
        support_images: float32 `(n_way * n_shot, 1, height, width)` in [0, 1].
        support_labels: int64 `(n_way * n_shot,)` in 0..n_way-1.
        query_images: float32 `(n_way * n_query, 1, height, width)` in [0, 1].
        query_labels: int64 `(n_way * n_query,)` in 0..n_way-1.
        class_indices: int64 `(n_way,)`: the dataset classes behind labels 0..n_way-1.
    """

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    class_indices: torch.Tensor


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes: classes without replacement, then for each
    class `n_shot + n_query` distinct samples.

    Raises `EpisodeError` at construction when the dataset cannot supply such episodes.
    """

    def __init__(self, dataset: ClassImageSet, n_way: int, n_shot: int, n_query: int, *,
                 seed: int = 0) -> None:
        for name, value, minimum in (("n_way", n_way, 1), ("n_shot", n_shot, 1),
                                     ("n_query", n_query, 0)):
            if not isinstance(value, int) or value < minimum:
                raise EpisodeError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if n_way > dataset.n_classes:
            raise EpisodeError(f"{n_way}-way episodes need {n_way} classes; {dataset.name} "
                               f"has {dataset.n_classes}")
        if n_shot + n_query > dataset.n_samples_per_class:
            raise EpisodeError(
                f"{n_shot} shots + {n_query} queries need {n_shot + n_query} samples per "
                f"class; {dataset.name} has {dataset.n_samples_per_class}")
        self.dataset = dataset
        self.n_way = n_way
        self.n_shot = n_shot
        self.n_query = n_query
        self.seed = seed
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def sample_indices(self) -> EpisodeIndices:
        """Draw the next episode's class and sample indices."""
        class_indices = self._rng.choice(self.dataset.n_classes, size=self.n_way,
                                         replace=False)
        # argsort of uniform keys is a random permutation per row, in one vectorised call.
        keys = self._rng.random((self.n_way, self.dataset.n_samples_per_class))
        sample_indices = np.argsort(keys, axis=1)[:, : self.n_shot + self.n_query]
        return EpisodeIndices(class_indices.astype(np.int64), sample_indices.astype(np.int64))

    def sample_ids(self) -> EpisodeSampleIds:
        """Draw the next episode as flat sample ids (no pixels copied)."""
        indices = self.sample_indices()
        ids = (indices.class_indices[:, None] * self.dataset.n_samples_per_class
               + indices.sample_indices)
        return EpisodeSampleIds(ids[:, : self.n_shot].ravel(), ids[:, self.n_shot:].ravel(),
                                indices.class_indices)

    def sample(self) -> Episode:
        """Draw the next episode as model-ready tensors."""
        return episode_from_ids(self.dataset, self.sample_ids())

    def episodes(self, n_episodes: int) -> Iterator[Episode]:
        """The next `n_episodes` episodes."""
        for _ in range(n_episodes):
            yield self.sample()


def episode_from_ids(dataset, ids: EpisodeSampleIds) -> Episode:
    """The pixels and labels of an episode given as sample ids (any dataset with
    `sample_tensor`: `ClassImageSet`, `GroupedImageSet`)."""
    return Episode(support_images=dataset.sample_tensor(ids.support_ids),
                   support_labels=ids.support_labels(),
                   query_images=dataset.sample_tensor(ids.query_ids),
                   query_labels=ids.query_labels(),
                   class_indices=torch.from_numpy(ids.class_indices.astype(np.int64)))
