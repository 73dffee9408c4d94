"""Seeded samplers of training batches (each owns its RNG, so a resumed run draws the
same batches as an uninterrupted one), and the uint8 -> float tensor conversion.

* `TrainingClassSampler`: a step sees several drawings of each of a set of classes
  (the MA-VAE's parallel episodes, a ProtoNet/Matching Nets episode).
* `StreamSampler`: Kaiser et al.'s training stream, one image per parallel episode
  per step, each episode showing each of its classes several times in random order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gaussmem.data.datasets import FewShotDataset
from gaussmem.errors import TrainingError


def images_to_tensor(images: np.ndarray, channels_last: bool,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 `(P, C, H, W)` strokes-bright -> float32 `(P * C, 1, H, W)` in [0, 1] on
    `device` (the uint8 pixels travel, a quarter of the float32 bytes)."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).flatten(0, 1).unsqueeze(1)
    tensor = pixels.to(device, non_blocking=True).to(torch.float32).div_(255.0)
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


def _check_shape(dataset: FewShotDataset, n_classes: int, images_per_class: int,
                 why: str = "per step") -> None:
    if n_classes > dataset.n_classes:
        raise TrainingError(f"{n_classes} classes per step but {dataset.name} has "
                            f"{dataset.n_classes}")
    if images_per_class > dataset.fewest_distinct_per_class:
        raise TrainingError(f"{images_per_class} distinct images per class ({why}) but "
                            f"the smallest class of {dataset.name} has "
                            f"{dataset.fewest_distinct_per_class}")


class _EpisodeReplay:
    """What both samplers share: an episode's draws come at once from the sampler's own
    RNG, and the state is that RNG's state at the episode's start plus the step, so a
    resumed run replays the episode's draw (which also leaves the RNG where the
    uninterrupted run's was) instead of storing the episode's images."""

    def __init__(self, seed: int, episode_length: int) -> None:
        self.episode_length = episode_length
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._episode_start_state = self._rng.bit_generator.state
        self._step_in_episode = 0

    @property
    def new_episode(self) -> bool:
        """True when the next batch starts a new episode (a memory must be cleared)."""
        return self._step_in_episode % self.episode_length == 0

    def _draw_episode(self) -> None:
        """Draw the whole episode from `self._rng`."""
        raise NotImplementedError

    def _forget_episode(self) -> None:
        """Drop the drawn episode (it is drawn again before its next batch)."""
        raise NotImplementedError

    def _next_step(self) -> int:
        """The step within the episode that the next batch is, drawing a new episode
        first where one starts."""
        if self.new_episode:
            self._step_in_episode = 0
            self._episode_start_state = self._rng.bit_generator.state
            self._draw_episode()
        step = self._step_in_episode
        self._step_in_episode += 1
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"episode_start_rng": self._episode_start_state,
                "step_in_episode": self._step_in_episode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._episode_start_state = state["episode_start_rng"]
        self._step_in_episode = int(state["step_in_episode"])
        self._rng.bit_generator.state = self._episode_start_state
        self._forget_episode()
        if self._step_in_episode > 0:
            self._draw_episode()


class TrainingClassSampler(_EpisodeReplay):
    """Draws training episodes' classes and each step's drawings with its own RNG.

    An episode draws its classes, then at once every drawing it will use: `support`
    drawings of each class to write into the cleared memory before the first query (so
    that no step queries an empty memory), then `images_per_class` for each of its
    `steps_per_episode` steps, all distinct (a photo and its mirror count as one). So no
    image is queried after it was stored in the same episode: the triplet's positives
    are other drawings of the class, never the image itself.

    `next_batch()` returns uint8 `(images_per_class, n_classes, H, W)`: drawing-major, so
    drawing p of class c sits at flat index `p * n_classes + c` and `roll(n_classes)`
    pairs every image with another drawing of its class. A new episode (new classes)
    starts every `steps_per_episode` batches; `new_episode` says when, before the call,
    and `episode_support()` gives the current episode's support after it.

    Under DDP (`world_size > 1`) every rank holds the same RNG: an episode draws the
    classes and drawings of all ranks, `n_classes * world_size` classes, and rank `r`
    keeps classes `r * n_classes ...` of them. So the ranks' classes are disjoint, and
    together they are exactly what one process with `n_classes * world_size` draws.
    """

    def __init__(self, dataset: FewShotDataset, n_classes: int, images_per_class: int,
                 steps_per_episode: int, seed: int, support: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if min(n_classes, images_per_class, steps_per_episode) < 1 or support < 0:
            raise TrainingError(f"a training episode needs n_classes, images_per_class and "
                                f"steps_per_episode >= 1 and support >= 0; got {n_classes}, "
                                f"{images_per_class}, {steps_per_episode}, {support}")
        self.per_class = support + images_per_class * steps_per_episode
        if not 0 <= rank < world_size:
            raise TrainingError(f"rank {rank} of a world of {world_size} processes")
        _check_shape(dataset, n_classes * world_size, self.per_class,
                     f"{support} support + {steps_per_episode} steps x {images_per_class}")
        self.dataset = dataset
        self.n_classes = n_classes
        self.images_per_class = images_per_class
        self.steps_per_episode = steps_per_episode
        self.support = support
        self.rank, self.world_size = rank, world_size
        super().__init__(seed, steps_per_episode)
        self._drawings: np.ndarray | None = None  # (n_classes, per_class, H, W)
        self._classes = np.zeros(n_classes, dtype=np.int64)

    @property
    def classes(self) -> np.ndarray:
        """The current episode's class indices into the dataset, `(n_classes,)`."""
        return self._classes

    def _draw_episode(self) -> None:
        every_rank = self._rng.choice(self.dataset.n_classes,
                                      self.n_classes * self.world_size, replace=False)
        drawings = self.dataset.draw_distinct(every_rank, self.per_class, self._rng)
        mine = slice(self.rank * self.n_classes, (self.rank + 1) * self.n_classes)
        self._classes, self._drawings = every_rank[mine], drawings[mine]

    def _forget_episode(self) -> None:
        self._drawings = None

    def next_batch(self) -> np.ndarray:
        step = self._next_step()
        assert self._drawings is not None
        first = self.support + step * self.images_per_class
        return self._drawings[:, first:first + self.images_per_class].transpose(1, 0, 2, 3)

    def episode_support(self) -> np.ndarray:
        """uint8 `(support, n_classes, H, W)`: the current episode's drawings that are
        written into the memory before its first step (drawing-major like batches)."""
        if self._drawings is None:
            raise TrainingError("episode_support() before the episode's first batch")
        return self._drawings[:, :self.support].transpose(1, 0, 2, 3)

    def restart_episode(self) -> None:
        """Go back to the start of the current episode: its next batch redraws it (for
        a run resumed on another number of ranks, whose episodes have another shape)."""
        self._rng.bit_generator.state = self._episode_start_state
        self._step_in_episode = 0
        self._forget_episode()


class StreamSampler(_EpisodeReplay):
    """Kaiser et al.'s parallel training episodes: `batch_episodes` episodes of `n_way`
    classes each (all distinct), every class shown `shows_per_class` times in a random
    order, so an episode lasts `n_way * shows_per_class` steps.

    `next_batch()` returns `(images (batch_episodes, H, W) uint8, labels (batch_episodes,)
    int64)`: step t's image of every parallel episode. Labels are unique across the
    parallel episodes (episode e's class j is `e * n_way + j`), since they share one
    memory.
    """

    def __init__(self, dataset: FewShotDataset, n_way: int, batch_episodes: int,
                 shows_per_class: int, seed: int) -> None:
        _check_shape(dataset, n_way * batch_episodes, shows_per_class)
        self.dataset = dataset
        self.n_way = n_way
        self.batch_episodes = batch_episodes
        self.shows_per_class = shows_per_class
        super().__init__(seed, n_way * shows_per_class)
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def _draw_episode(self) -> None:
        """`_images (length, batch_episodes, H, W)` and `_labels (length, batch_episodes)`."""
        n_classes = self.n_way * self.batch_episodes
        classes = self._rng.choice(self.dataset.n_classes, n_classes, replace=False)
        drawn = self.dataset.draw_distinct(classes, self.shows_per_class, self._rng)
        # Each episode's stream: its classes' drawings in a random order.
        local = np.repeat(np.arange(self.n_way), self.shows_per_class)
        orders = np.stack([self._rng.permutation(self.episode_length)
                           for _ in range(self.batch_episodes)], axis=1)
        class_in_episode = local[orders]  # (length, batch_episodes)
        show = np.zeros_like(class_in_episode)
        for episode in range(self.batch_episodes):
            counts = np.zeros(self.n_way, dtype=np.int64)
            for step, label in enumerate(class_in_episode[:, episode]):
                show[step, episode] = counts[label]
                counts[label] += 1
        labels = np.arange(self.batch_episodes)[None, :] * self.n_way + class_in_episode
        self._images = drawn[labels, show]
        self._labels = labels

    def _forget_episode(self) -> None:
        self._images = self._labels = None

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        step = self._next_step()
        assert self._images is not None and self._labels is not None
        return self._images[step], self._labels[step].astype(np.int64)
