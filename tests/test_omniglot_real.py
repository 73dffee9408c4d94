"""The real Omniglot release under $GAUSSMEM_DATA: counts, splits, disjointness, pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gaussmem.data.episodes import EpisodeSampler
from gaussmem.data.omniglot import load_omniglot, load_omniglot_characters

pytestmark = pytest.mark.data


def characters_of(class_names: list[str]) -> set[str]:
    return {name.rsplit("/", 1)[0] for name in class_names}


def test_release_counts(real_data_dir: Path, real_cache_dir: Path) -> None:
    cached = load_omniglot_characters(real_data_dir, real_cache_dir)
    assert cached.array.shape == (1623, 20, 28, 28)
    collections = cached.metadata["collections"]
    assert collections.count("images_background") == 964
    assert collections.count("images_evaluation") == 659
    alphabets = {(c, n.split("/")[0]) for n, c in zip(cached.metadata["characters"],
                                                      collections, strict=True)}
    assert sum(c == "images_background" for c, _ in alphabets) == 30
    assert sum(c == "images_evaluation" for c, _ in alphabets) == 20
    means = cached.array.reshape(1623 * 20, -1).mean(axis=1)
    assert means.min() > 0 and means.max() < 128, "strokes bright on a dark background"


@pytest.mark.parametrize(("scheme", "subset", "n_classes"), [
    ("vinyals", "train", 4112), ("vinyals", "val", 688), ("vinyals", "trainval", 4800),
    ("vinyals", "test", 1692), ("lake", "train", 3856), ("lake", "test", 659)])
def test_split_sizes(real_data_dir: Path, real_cache_dir: Path, scheme: str, subset: str,
                     n_classes: int) -> None:
    dataset = load_omniglot(scheme, subset, data_dir=real_data_dir, cache_dir=real_cache_dir)
    assert dataset.images.shape == (n_classes, 20, 28, 28)


def test_vinyals_subsets_are_disjoint_and_cover_the_release(real_data_dir: Path,
                                                            real_cache_dir: Path) -> None:
    subsets = {s: characters_of(load_omniglot("vinyals", s, data_dir=real_data_dir,
                                              cache_dir=real_cache_dir).class_names)
               for s in ("train", "val", "trainval", "test")}
    assert not subsets["train"] & subsets["val"]
    assert not subsets["train"] & subsets["test"]
    assert not subsets["val"] & subsets["test"]
    assert subsets["trainval"] == subsets["train"] | subsets["val"]
    assert len(subsets["trainval"] | subsets["test"]) == 1623


def test_lake_train_and_test_alphabets_are_disjoint(real_data_dir: Path,
                                                    real_cache_dir: Path) -> None:
    train = load_omniglot("lake", "train", data_dir=real_data_dir, cache_dir=real_cache_dir)
    test = load_omniglot("lake", "test", data_dir=real_data_dir, cache_dir=real_cache_dir)
    alphabets = [{n.split("/")[0] for n in d.class_names} for d in (train, test)]
    assert not alphabets[0] & alphabets[1]
    assert all(name.endswith("rot000") for name in test.class_names)


def test_rotated_classes_are_rotations_of_each_other(real_data_dir: Path,
                                                     real_cache_dir: Path) -> None:
    test = load_omniglot("vinyals", "test", data_dir=real_data_dir, cache_dir=real_cache_dir)
    index = {name: i for i, name in enumerate(test.class_names)}
    base = test.class_names[0].rsplit("/", 1)[0]
    upright = test.images[index[f"{base}/rot000"]]
    quarter = test.images[index[f"{base}/rot090"]]
    np.testing.assert_array_equal(quarter, np.rot90(upright, 1, axes=(1, 2)))
    assert not np.array_equal(quarter, upright)


def test_a_400_way_5_shot_episode_from_the_test_split(real_data_dir: Path,
                                                      real_cache_dir: Path) -> None:
    test = load_omniglot("vinyals", "test", data_dir=real_data_dir, cache_dir=real_cache_dir)
    episode = EpisodeSampler(test, n_way=400, n_shot=5, n_query=15, seed=0).sample()
    assert episode.support_images.shape == (2000, 1, 28, 28)
    assert episode.query_images.shape == (6000, 1, 28, 28)
    assert float(episode.query_images.min()) >= 0.0 and float(episode.query_images.max()) <= 1.0
