"""Training and evaluating on grouped (LFW-a-like) sets: the shared dataset interface,
mirror-safe training draws, query defaults, and every method end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_set
from gaussmem.checkpoint import load_checkpoint
from gaussmem.data.datasets import default_n_query, episode_sampler, load_split
from gaussmem.data.episodes import EpisodeSampler
from gaussmem.data.grouped_images import GroupedEpisodeSampler, GroupedImageSet
from gaussmem.data.lfw import paper_split
from gaussmem.data.training_sampler import StreamSampler, TrainingClassSampler
from gaussmem.errors import EpisodeError
from gaussmem.evaluate import evaluate_checkpoint, evaluate_online
from gaussmem.methods import classifier_from_checkpoint
from gaussmem.metrics_log import read_metrics
from gaussmem.presets import preset
from gaussmem.train import LAST_CHECKPOINT, TrainingError, train

METHODS = ("mavae", "protonet", "matching", "kaiser")


def traceable_set(counts: list[int], side: int = 6) -> GroupedImageSet:
    """Original i carries i + 1 at pixel [0, 0]; its mirror carries it at [0, -1]."""
    images = np.zeros((sum(counts), side, side), dtype=np.uint8)
    images[:, 0, 0] = np.arange(1, sum(counts) + 1)
    return GroupedImageSet(images=images, class_offsets=np.concatenate([[0], np.cumsum(counts)]),
                           class_names=[f"p{i}" for i in range(len(counts))], name="traceable")


def learnable_faces(n_people: int = 12, seed: int = 0) -> GroupedImageSet:
    """28x28 'people' = a random template + noise, 5 to 8 photos each, mirrored."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 9, n_people)
    templates = rng.random((n_people, 28, 28)) < 0.2
    owner = np.repeat(np.arange(n_people), counts)
    noise = rng.random((len(owner), 28, 28)) < 0.03
    images = ((templates[owner] ^ noise) * 255).astype(np.uint8)
    return GroupedImageSet(images=images, class_offsets=np.concatenate([[0], np.cumsum(counts)]),
                           class_names=[f"person{i}" for i in range(n_people)], name="faces")


def decode(images: np.ndarray) -> list[tuple[int, bool]]:
    """(original, mirrored) of each uint8 `(n, H, W)` traceable image."""
    return [(int(max(p[0, 0], p[0, -1])) - 1, bool(p[0, -1] > 0)) for p in images]


def test_training_draws_distinct_photos_of_the_right_person_never_with_their_mirror() -> None:
    faces = traceable_set([5, 6, 5, 8, 7])
    rng = np.random.default_rng(0)
    saw_flip = saw_plain = False
    for _ in range(100):
        classes = rng.choice(faces.n_classes, 3, replace=False)
        drawn = faces.draw_distinct(classes, 5, rng)
        assert drawn.shape == (3, 5, 6, 6)
        for row, person in zip(drawn, classes, strict=True):
            decoded = decode(row)
            originals = [original for original, _ in decoded]
            assert len(set(originals)) == 5, "a photo was drawn twice (or with its mirror)"
            start, stop = faces.class_offsets[person], faces.class_offsets[person + 1]
            assert all(start <= original < stop for original in originals)
            saw_flip |= any(flipped for _, flipped in decoded)
            saw_plain |= not all(flipped for _, flipped in decoded)
    assert saw_flip and saw_plain


def test_an_episode_never_queries_a_stored_photo_or_its_mirror() -> None:
    """Support + 2 steps x 2 photos = 5 distinct originals per person per episode: no
    query is a photo (or the mirror of a photo) already written to the memory."""
    faces = traceable_set([5, 6, 5, 8, 7])
    sampler = TrainingClassSampler(faces, 4, 2, 2, seed=3, support=1)
    for _ in range(20):
        first = sampler.next_batch()
        support = sampler.episode_support()
        second = sampler.next_batch()
        for column, person in enumerate(sampler.classes):
            stored = [original for original, _ in decode(support[:, column])]
            for batch in (first, second):
                queried = [original for original, _ in decode(batch[:, column])]
                assert not set(queried) & set(stored)
                stored += queried
            assert len(set(stored)) == 5
            start, stop = faces.class_offsets[person], faces.class_offsets[person + 1]
            assert all(start <= original < stop for original in stored)


def test_training_samplers_accept_grouped_sets_and_refuse_too_many_draws() -> None:
    faces = traceable_set([5, 6, 5, 8, 7])
    batch = TrainingClassSampler(faces, 4, 2, 2, seed=0).next_batch()
    assert batch.shape == (2, 4, 6, 6)
    images, labels = StreamSampler(faces, 2, 2, 5, seed=0).next_batch()
    assert images.shape == (2, 6, 6) and labels.tolist() == sorted(set(labels.tolist()))
    with pytest.raises(TrainingError, match="6 distinct images per class.*smallest class"):
        TrainingClassSampler(faces, 4, 6, 1, seed=0)
    # An episode's drawings are all distinct: 3 steps of 2 need 6 photos of everyone.
    with pytest.raises(TrainingError, match=r"6 distinct images per class \(0 support"):
        TrainingClassSampler(faces, 4, 2, 3, seed=0)


def test_default_queries_fill_what_every_class_can_spare() -> None:
    faces = traceable_set([5, 6, 9])
    # 1 shot takes one photo (group), leaving 4 photos = 8 samples; 5 shots take 3.
    assert default_n_query(faces, 1) == 8
    assert default_n_query(faces, 5) == 4
    for n_shot in (1, 5):
        episode_sampler(faces, 3, n_shot, default_n_query(faces, n_shot)).sample()
    assert default_n_query(synthetic_set(), 1) == 15
    assert isinstance(episode_sampler(faces, 2, 1, 1), GroupedEpisodeSampler)
    assert isinstance(episode_sampler(synthetic_set(), 2, 1, 1), EpisodeSampler)


def test_sample_ids_give_the_same_pixels_as_the_episode() -> None:
    for dataset in (traceable_set([5, 6, 7, 5]), synthetic_set()):
        by_ids = episode_sampler(dataset, 3, 2, 2, seed=4).sample_ids()
        episode = episode_sampler(dataset, 3, 2, 2, seed=4).sample()
        assert np.array_equal(dataset.sample_tensor(by_ids.support_ids).numpy(),
                              episode.support_images.numpy())
        assert np.array_equal(dataset.sample_tensor(by_ids.query_ids).numpy(),
                              episode.query_images.numpy())


def test_online_protocol_refuses_mirrored_sets(tmp_path: Path) -> None:
    faces = learnable_faces()
    train(preset("smoke"), tmp_path / "run", faces, faces, progress=False)
    classifier = classifier_from_checkpoint(load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT))
    with pytest.raises(EpisodeError, match="online protocol is not available on faces"):
        evaluate_online(classifier, faces, n_way=3, max_shot=1, episodes=1)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_evaluates_on_a_grouped_set(tmp_path: Path, method: str
                                                            ) -> None:
    faces = learnable_faces()
    config = preset("smoke")
    config.method = method
    result = train(config, tmp_path / "run", faces, faces, progress=False)
    assert result.step == config.budget.max_steps
    report = evaluate_checkpoint(tmp_path / "run" / LAST_CHECKPOINT, n_way=4, n_shot=5,
                                 episodes=3, dataset=faces)
    assert report["n_query"] == default_n_query(faces, 5) == 4
    assert report["dataset"] == "faces"
    # The learnable faces are told apart above chance after the smoke preset's steps.
    assert report["result"]["accuracy"]["mean"] > 100 / 4


def test_networks_and_data_of_different_sizes_are_refused(tmp_path: Path) -> None:
    config = preset("smoke")
    config.model.image_size = 84
    with pytest.raises(TrainingError, match="28x28 images but the config's networks take "
                                            "84x84"):
        train(config, tmp_path / "run", synthetic_set(), synthetic_set(), progress=False)


@pytest.mark.data
def test_lfw_presets_train_on_fit_people_and_select_on_val_people(
        real_data_dir: Path, real_cache_dir: Path, tmp_path: Path) -> None:
    fit, val, train_people = paper_split("fit"), paper_split("val"), paper_split("train")
    assert (len(fit), len(val)) == (300, 43)
    assert not set(fit) & set(val) and sorted(fit + val) == sorted(train_people)
    assert not set(train_people) & set(paper_split("test"))
    config = preset("lfw-cpu")
    config.budget.max_minutes, config.budget.max_steps = None, 2
    config.validation.episodes, config.run_figures = 3, False
    fit_set = load_split(config.data, "fit", data_dir=real_data_dir, cache_dir=real_cache_dir)
    val_set = load_split(config.data, "val", data_dir=real_data_dir, cache_dir=real_cache_dir)
    assert (fit_set.n_classes, val_set.n_classes, fit_set.image_shape) == (300, 43, (84, 84))
    result = train(config, tmp_path / "run", fit_set, val_set, progress=False)
    assert result.step == 2
    # Selection read the validation people: the best is the validation records' best.
    validations = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
                   if r["kind"] == "val"]
    assert validations and validations[-1]["step"] == 2
    assert result.best_val_accuracy == max(r["val_accuracy"] for r in validations)


def test_dataset_settings_that_name_no_split_are_refused() -> None:
    from gaussmem.errors import DataError

    with pytest.raises(DataError, match="LFW-a splits are 'paper' and 'generated'"):
        load_split({"dataset": "lfw", "scheme": "vinyals"}, "fit")
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_split({"dataset": "mnist", "scheme": "paper"}, "train")
