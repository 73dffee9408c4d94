"""One entry point to the few-shot datasets, so training and evaluation never branch on
which dataset a run uses.

A dataset split is either a `ClassImageSet` (Omniglot: every class has the same number
of drawings) or a `GroupedImageSet` (LFW-a: people have unequal photo counts, and a
photo and its mirror must stay on one side of an episode). Both offer the same few
members: `name`, `n_classes`, `image_shape`, `n_samples`, `sample_tensor(ids)`,
`draw_distinct(classes, count, rng)`, `fewest_distinct_per_class`, `pixel_mean()`.
`episode_sampler` picks the sampler that keeps each one's episodes honest.

Datasets are registered by name (`register_dataset`, beside each loader), so a new
dataset is a module of its own and one import line in `gaussmem/data/__init__.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gaussmem.data.class_images import ClassImageSet
from gaussmem.data.episodes import EpisodeSampler
from gaussmem.data.grouped_images import GroupedEpisodeSampler, GroupedImageSet
from gaussmem.errors import DataError

FewShotDataset = ClassImageSet | GroupedImageSet
EpisodeSource = EpisodeSampler | GroupedEpisodeSampler

#: Queries per class where every class has room for them (Vinyals/Snell on Omniglot).
OMNIGLOT_N_QUERY = 15

#: `load(scheme, subset, *, data_dir, cache_dir)`: one class subset of a split scheme.
SplitLoader = Callable[..., FewShotDataset]


@dataclass(frozen=True)
class DatasetEntry:
    """What the rest of the library needs to know about a registered dataset."""

    load: SplitLoader
    #: How a recognizer prepares a user's image like the training images
    #: (gaussmem.preprocess): "strokes" (bright strokes on black) or "photo" (grey).
    image_kind: str


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, image_kind: str) -> Callable[[SplitLoader], SplitLoader]:
    """Function decorator: the split loader of the dataset `data.dataset = name`, as
    `register_method` makes a classifier available by name."""

    def decorate(load: SplitLoader) -> SplitLoader:
        if name in _DATASETS and _DATASETS[name].load is not load:
            raise ValueError(f"dataset {name!r} is already registered to {_DATASETS[name].load}")
        _DATASETS[name] = DatasetEntry(load, image_kind)
        return load

    return decorate


def available_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    """The entry registered as `name`; `DataError` lists the known names."""
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {available_datasets()}")
    return _DATASETS[name]


def load_split(data: Any, subset: str, *, data_dir: Path | None = None,
               cache_dir: Path | None = None) -> FewShotDataset:
    """Subset `subset` of the dataset a `DataConfig` (or its dict form) names, split by
    its `scheme` (gaussmem.data.omniglot, gaussmem.data.lfw)."""
    values = data if isinstance(data, dict) else vars(data)
    return dataset_entry(values["dataset"]).load(values["scheme"], subset,
                                                 data_dir=data_dir, cache_dir=cache_dir)


def episode_sampler(dataset: FewShotDataset, n_way: int, n_shot: int, n_query: int, *,
                    seed: int = 0) -> EpisodeSource:
    """The seeded N-way K-shot sampler for `dataset` (mirror-safe for grouped sets)."""
    if isinstance(dataset, GroupedImageSet):
        return GroupedEpisodeSampler(dataset, n_way, n_shot, n_query, seed=seed)
    return EpisodeSampler(dataset, n_way, n_shot, n_query, seed=seed)


def default_n_query(dataset: FewShotDataset, n_shot: int) -> int:
    """Queries per class when none are asked for: 15 on Omniglot (as Vinyals/Snell), and
    on a grouped set the most every class can give next to `n_shot` shots (a photo's
    mirror never crosses to the other side), capped at 15."""
    if isinstance(dataset, GroupedImageSet):
        per_group = dataset.samples_per_group
        left = dataset.fewest_distinct_per_class - math.ceil(n_shot / per_group)
        return max(0, min(OMNIGLOT_N_QUERY, left * per_group))
    return max(0, min(OMNIGLOT_N_QUERY, dataset.n_samples_per_class - n_shot))
