"""`GroupedImageSet` and its episode sampler: classes of unequal size whose samples come
in groups that must stay on one side of an episode's support/query boundary.

LFW-a needs both: people have 5 to 530 photos, and each photo is used twice, as taken
and mirrored. A photo and its mirror are two samples of the same person, but if one were
a support shot and the other a query, the query would be answered by near-copying
(accuracy inflated). So the sampler draws whole groups (a photo with its mirror) for the
support set and different groups for the queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gaussmem.data.class_images import pixels_to_tensor
from gaussmem.data.episodes import Episode, EpisodeSampleIds, episode_from_ids
from gaussmem.errors import EpisodeError


@dataclass(frozen=True)
class GroupedImageSet:
    """Originals of unequal-size classes; with `mirror`, each original also gives its
    left-right flip as a second sample of the same group.

    Attributes:
        images: uint8 `(n_originals, height, width)`, sorted by class.
        class_offsets: int64 `(n_classes + 1,)`: class c owns originals
            `class_offsets[c]:class_offsets[c + 1]`.
        class_names: one name per class.
        name: what this set is, e.g. `"lfw/paper/test"`.
        mirror: whether each original yields a mirrored sample too.
    """

    images: np.ndarray
    class_offsets: np.ndarray
    class_names: list[str]
    name: str
    mirror: bool = True

    def __post_init__(self) -> None:
        if self.images.ndim != 3:
            raise ValueError(f"{self.name}: images must be (n_originals, height, width), got "
                             f"{self.images.shape}")
        if (len(self.class_offsets) != len(self.class_names) + 1
                or self.class_offsets[0] != 0 or self.class_offsets[-1] != len(self.images)
                or np.any(np.diff(self.class_offsets) <= 0)):
            raise ValueError(f"{self.name}: class_offsets must rise from 0 to "
                             f"{len(self.images)} with one step per class")

    #: Photographs: 255 is light, so figures draw them as they are.
    strokes_bright = False

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def samples_per_group(self) -> int:
        return 2 if self.mirror else 1

    @property
    def image_shape(self) -> tuple[int, int]:
        return (int(self.images.shape[1]), int(self.images.shape[2]))

    @property
    def n_samples(self) -> int:
        """Samples in the set (originals, and mirrors when `mirror`)."""
        return len(self.images) * self.samples_per_group

    def originals_per_class(self) -> np.ndarray:
        return np.diff(self.class_offsets)

    @property
    def fewest_distinct_per_class(self) -> int:
        """Distinct photos every class can give a training step (a photo and its mirror
        count once: drawing both would hand the step a near-duplicate pair)."""
        return int(self.originals_per_class().min())

    def sample_tensor(self, sample_ids: np.ndarray) -> torch.Tensor:
        """float32 `(len(sample_ids), 1, H, W)` in [0, 1] of sample ids."""
        pixels = self.sample_pixels(np.asarray(sample_ids, dtype=np.int64).ravel())
        return pixels_to_tensor(pixels)

    def draw_distinct(self, class_indices: np.ndarray, count: int,
                      rng: np.random.Generator) -> np.ndarray:
        """uint8 `(len(class_indices), count, H, W)`: `count` distinct photos of each
        class, each mirrored with probability 1/2 when `mirror` (the paper's doubling,
        as augmentation: never a photo together with its own mirror)."""
        class_indices = np.asarray(class_indices, dtype=np.int64)
        starts = self.class_offsets[class_indices]
        sizes = self.class_offsets[class_indices + 1] - starts
        keys = rng.random((len(class_indices), int(sizes.max())))
        keys[np.arange(keys.shape[1])[None, :] >= sizes[:, None]] = np.inf
        originals = starts[:, None] + np.argsort(keys, axis=1)[:, :count]
        flipped = (rng.integers(0, 2, originals.shape) if self.mirror
                   else np.zeros_like(originals))
        return self.sample_pixels(originals * self.samples_per_group + flipped)

    def pixel_mean(self) -> np.ndarray:
        """Mean image over every sample, float64 `(H, W)` in [0, 255] (mirrors included)."""
        total = self.images.astype(np.float64).sum(axis=0)
        if self.mirror:
            total = (total + total[:, ::-1]) / 2
        return total / len(self.images)

    def sample_pixels(self, sample_ids: np.ndarray) -> np.ndarray:
        """uint8 pixels of samples `sample_ids` (sample = original * samples_per_group +
        flipped), shape `(*sample_ids.shape, height, width)`."""
        originals, flipped = np.divmod(sample_ids, self.samples_per_group)
        pixels = self.images[originals]
        return np.where(flipped[..., None, None] == 1, pixels[..., ::-1], pixels)


class GroupedEpisodeSampler:
    """N-way K-shot Q-query episodes from a `GroupedImageSet`, groups never straddling.

    Per class: shuffle its groups, give the first `ceil(n_shot / samples_per_group)` to
    the support set and the next `ceil(n_query / samples_per_group)` to the queries, then
    draw the shots and queries among those groups' samples. So a 5-shot support set may
    hold a photo and its mirror (two shots), but never a photo whose mirror is a query.
    """

    def __init__(self, dataset: GroupedImageSet, n_way: int, n_shot: int, n_query: int, *,
                 seed: int = 0) -> None:
        if n_way < 1 or n_shot < 1 or n_query < 0:
            raise EpisodeError(f"need n_way >= 1, n_shot >= 1, n_query >= 0; got {n_way}, "
                               f"{n_shot}, {n_query}")
        if n_way > dataset.n_classes:
            raise EpisodeError(f"{n_way}-way episodes need {n_way} classes; {dataset.name} "
                               f"has {dataset.n_classes}")
        per_group = dataset.samples_per_group
        self._support_groups = math.ceil(n_shot / per_group)
        self._query_groups = math.ceil(n_query / per_group)
        fewest = int(dataset.originals_per_class().min())
        if self._support_groups + self._query_groups > fewest:
            raise EpisodeError(
                f"{n_shot} shots + {n_query} queries need {self._support_groups} + "
                f"{self._query_groups} distinct photos per class (a photo and its mirror "
                f"stay on one side); the smallest class of {dataset.name} has {fewest}")
        self.dataset = dataset
        self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def _class_samples(self, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        start = int(self.dataset.class_offsets[class_index])
        n_originals = int(self.dataset.class_offsets[class_index + 1]) - start
        per_group = self.dataset.samples_per_group
        groups = start + self._rng.permutation(n_originals)
        support_groups = groups[: self._support_groups]
        query_groups = groups[self._support_groups: self._support_groups + self._query_groups]

        def draw(chosen_groups: np.ndarray, count: int) -> np.ndarray:
            samples = (chosen_groups[:, None] * per_group + np.arange(per_group)).ravel()
            return self._rng.permutation(samples)[:count]
        return draw(support_groups, self.n_shot), draw(query_groups, self.n_query)

    def sample_ids(self) -> EpisodeSampleIds:
        """Draw the next episode as sample ids (same layout as `EpisodeSampler`)."""
        class_indices = self._rng.choice(self.dataset.n_classes, self.n_way, replace=False)
        drawn = [self._class_samples(int(c)) for c in class_indices]
        support_ids = np.stack([support for support, _ in drawn]).ravel()
        query_ids = np.stack([query for _, query in drawn]).reshape(-1)
        return EpisodeSampleIds(support_ids, query_ids, class_indices.astype(np.int64))

    def sample(self) -> Episode:
        """Draw the next episode as model-ready tensors (same layout as `EpisodeSampler`)."""
        return episode_from_ids(self.dataset, self.sample_ids())

    def episodes(self, n_episodes: int):
        """The next `n_episodes` episodes."""
        for _ in range(n_episodes):
            yield self.sample()
