"""The N-way K-shot episode sampler, on a synthetic ClassImageSet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaussmem.data.class_images import ClassImageSet
from gaussmem.data.episodes import EpisodeSampler
from gaussmem.errors import EpisodeError


@pytest.fixture
def dataset() -> ClassImageSet:
    # Pixel value encodes (class, sample) so every gathered image can be traced back.
    n_classes, n_samples = 12, 20
    values = np.arange(n_classes)[:, None] * n_samples + np.arange(n_samples)[None, :]
    images = np.broadcast_to(values[:, :, None, None], (n_classes, n_samples, 4, 4))
    return ClassImageSet(images=np.ascontiguousarray(images, dtype=np.uint8),
                         class_names=[f"class{i}" for i in range(n_classes)], name="synthetic")


def test_shapes_labels_and_class_major_layout(dataset: ClassImageSet) -> None:
    episode = EpisodeSampler(dataset, n_way=5, n_shot=3, n_query=4, seed=1).sample()
    assert episode.support_images.shape == (15, 1, 4, 4)
    assert episode.query_images.shape == (20, 1, 4, 4)
    assert episode.support_images.dtype == torch.float32
    assert episode.support_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert episode.query_labels.tolist() == sorted(list(range(5)) * 4)
    assert len(set(episode.class_indices.tolist())) == 5


def test_images_come_from_the_labelled_class_and_never_repeat(dataset: ClassImageSet) -> None:
    sampler = EpisodeSampler(dataset, n_way=4, n_shot=2, n_query=5, seed=3)
    for episode in sampler.episodes(20):
        for images, labels in ((episode.support_images, episode.support_labels),
                               (episode.query_images, episode.query_labels)):
            codes = torch.round(images[:, 0, 0, 0] * 255).long()
            assert torch.equal(codes // 20, episode.class_indices[labels])
        seen = torch.cat([episode.support_images, episode.query_images])[:, 0, 0, 0]
        labels = torch.cat([episode.support_labels, episode.query_labels])
        for label in range(4):
            values = seen[labels == label]
            assert values.unique().numel() == values.numel(), "a sample drawn twice"


def test_pixels_match_the_dataset_exactly(dataset: ClassImageSet) -> None:
    sampler = EpisodeSampler(dataset, n_way=3, n_shot=1, n_query=2, seed=5)
    indices = EpisodeSampler(dataset, n_way=3, n_shot=1, n_query=2, seed=5).sample_indices()
    episode = sampler.sample()
    for way in range(3):
        expected = dataset.images[indices.class_indices[way], indices.sample_indices[way, 0]]
        np.testing.assert_array_equal(episode.support_images[way, 0].numpy() * 255, expected)


def test_same_seed_same_episodes_whatever_happened_before(dataset: ClassImageSet) -> None:
    reference = [e.query_images for e in EpisodeSampler(dataset, 5, 1, 3, seed=0).episodes(5)]
    np.random.seed(123)
    torch.manual_seed(123)
    EpisodeSampler(dataset, 5, 1, 3, seed=7).sample()
    again = [e.query_images for e in EpisodeSampler(dataset, 5, 1, 3, seed=0).episodes(5)]
    assert all(torch.equal(a, b) for a, b in zip(reference, again, strict=True))
    other = [e.query_images for e in EpisodeSampler(dataset, 5, 1, 3, seed=1).episodes(5)]
    assert not all(torch.equal(a, b) for a, b in zip(reference, other, strict=True))


@pytest.mark.parametrize(("n_way", "n_shot", "n_query", "message"), [
    (13, 1, 1, "13-way episodes need 13 classes; synthetic has 12"),
    (5, 5, 16, "5 shots \\+ 16 queries need 21 samples per class; synthetic has 20"),
    (0, 1, 1, "n_way must be an integer >= 1, got 0"),
    (5, 0, 1, "n_shot must be an integer >= 1, got 0"),
    (5, 1, -1, "n_query must be an integer >= 0, got -1"),
])
def test_impossible_requests_are_refused(dataset: ClassImageSet, n_way: int, n_shot: int,
                                         n_query: int, message: str) -> None:
    with pytest.raises(EpisodeError, match=message):
        EpisodeSampler(dataset, n_way, n_shot, n_query)
