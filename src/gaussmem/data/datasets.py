"""One entry point to the few-shot datasets, so training and evaluation never branch on
which dataset a run uses.

A dataset split is either a `ClassImageSet` (Omniglot: every class has the same number
of drawings) or a `GroupedImageSet` (LFW-a: people have unequal photo counts, and a
photo and its mirror must stay on one side of an episode). Both offer the same few
members: `name`, `n_classes`, `image_shape`, `n_samples`, `sample_tensor(ids)`,
`draw_distinct(classes, count, rng)`, `fewest_distinct_per_class`, `pixel_mean()`.
`episode_sampler` picks the sampler that keeps each one's episodes honest.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gaussmem.data.class_images import ClassImageSet
from gaussmem.data.episodes import EpisodeSampler
from gaussmem.data.grouped_images import GroupedEpisodeSampler, GroupedImageSet
from gaussmem.errors import DataError

FewShotDataset = ClassImageSet | GroupedImageSet
EpisodeSource = EpisodeSampler | GroupedEpisodeSampler

DATASETS = ("omniglot", "lfw")
#: Queries per class where every class has room for them (Vinyals/Snell on Omniglot).
OMNIGLOT_N_QUERY = 15


def load_split(data: Any, subset: str, *, data_dir: Path | None = None,
               cache_dir: Path | None = None) -> FewShotDataset:
    """Subset `subset` of the dataset a `DataConfig` (or its dict form) names.

    Omniglot: `data.scheme` ("vinyals", "lake") and subsets train/val/test/trainval.
    LFW-a: the committed `paper` split, subsets train/test and fit/val (see
    gaussmem.data.lfw).
    """
    values = data if isinstance(data, dict) else vars(data)
    dataset, scheme = values["dataset"], values["scheme"]
    if dataset == "omniglot":
        from gaussmem.data.omniglot import load_omniglot

        return load_omniglot(scheme, subset, data_dir=data_dir, cache_dir=cache_dir)
    if dataset == "lfw":
        from gaussmem.data.lfw import load_lfw

        if scheme not in ("paper", "generated"):
            raise DataError(f"LFW-a splits are 'paper' and 'generated', not data.scheme="
                            f"{scheme!r}; start from an LFW preset (lfw-5way, lfw-cpu, "
                            "<method>-lfw-cpu), which sets it")
        return load_lfw(subset, split=scheme, data_dir=data_dir, cache_dir=cache_dir)
    raise DataError(f"unknown dataset {dataset!r}; choose from {DATASETS}")


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
