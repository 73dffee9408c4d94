"""LFW-a: the loader on a synthetic tarball, the mirror leakage rule, and the real data."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gaussmem.data.grouped_images import GroupedEpisodeSampler, GroupedImageSet
from gaussmem.data.lfw import (
    LFW_A_TOTALS,
    load_lfw,
    load_lfw_faces,
    paper_split,
    people_counts,
    split_people,
)
from gaussmem.errors import DataError, EpisodeError

SYNTHETIC_PEOPLE = {"Ada_Lovelace": 6, "Alan_Turing": 3, "Grace_Hopper": 5, "Kurt_Godel": 1,
                    "Emmy_Noether": 7}


def face_jpeg(seed: int, size: int = 250) -> bytes:
    image = Image.new("L", (size, size), 40)
    ImageDraw.Draw(image).ellipse([20 + seed % 50, 30, 150, 200], fill=200)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tarball(data_dir: Path, people: dict[str, int], size: int = 250,
                  skip: str | None = None) -> Path:
    path = data_dir / "lfw" / "lfwa.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for index, (person, count) in enumerate(sorted(people.items())):
            for number in range(1, count + 1):
                name = f"lfw2/{person}/{person}_{number:04d}.jpg"
                if name == skip:
                    continue
                payload = face_jpeg(index * 10 + number, size)
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    return path


def test_keeps_people_with_enough_photos_sorted(tmp_path: Path) -> None:
    write_tarball(tmp_path, SYNTHETIC_PEOPLE)
    cached = load_lfw_faces(5, data_dir=tmp_path, cache_dir=tmp_path / "c", expected_totals=None)
    assert cached.metadata["people"] == ["Ada_Lovelace", "Emmy_Noether", "Grace_Hopper"]
    assert cached.metadata["counts"] == [6, 7, 5]
    assert cached.array.shape == (18, 84, 84) and cached.array.dtype == np.uint8
    assert people_counts(tmp_path) == SYNTHETIC_PEOPLE


def test_generated_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    write_tarball(tmp_path, SYNTHETIC_PEOPLE)
    kwargs = dict(split="generated", min_images=3, n_test=1, data_dir=tmp_path,
                  cache_dir=tmp_path / "c", expected_totals=None)
    train, test = load_lfw("train", **kwargs), load_lfw("test", **kwargs)
    assert len(train.class_names) == 3 and len(test.class_names) == 1
    assert not set(train.class_names) & set(test.class_names)
    assert split_people(list(SYNTHETIC_PEOPLE)[::-1], 2) == split_people(list(SYNTHETIC_PEOPLE), 2)


def test_gap_in_numbering_wrong_size_and_bad_totals_are_named(tmp_path: Path) -> None:
    write_tarball(tmp_path / "gap", SYNTHETIC_PEOPLE,
                  skip="lfw2/Ada_Lovelace/Ada_Lovelace_0002.jpg")
    with pytest.raises(DataError, match="Ada_Lovelace's photos are numbered"):
        load_lfw_faces(5, data_dir=tmp_path / "gap", cache_dir=tmp_path / "c",
                       expected_totals=None)
    write_tarball(tmp_path / "size", SYNTHETIC_PEOPLE, size=200)
    with pytest.raises(DataError, match=r"Ada_Lovelace_0001\.jpg is 200x200; expected 250x250"):
        load_lfw_faces(5, data_dir=tmp_path / "size", cache_dir=tmp_path / "c",
                       expected_totals=None)
    write_tarball(tmp_path / "few", SYNTHETIC_PEOPLE)
    with pytest.raises(DataError, match="found 5 people and 22 images; LFW-a has 5749"):
        load_lfw_faces(5, data_dir=tmp_path / "few", cache_dir=tmp_path / "c")


def test_truncated_tarball_is_named(tmp_path: Path) -> None:
    path = write_tarball(tmp_path, SYNTHETIC_PEOPLE)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"lfwa\.tar\.gz is not a readable \.tar\.gz"):
        load_lfw_faces(5, data_dir=tmp_path, cache_dir=tmp_path / "c", expected_totals=None)


def test_missing_lfw_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'lfw' / 'lfwa.tar.gz'}"):
        load_lfw("test", data_dir=tmp_path, cache_dir=tmp_path)


# --- mirrors never straddle support and query -------------------------------------------

@pytest.fixture
def traceable_faces() -> GroupedImageSet:
    """Each original's pixel [0, 0] holds its index; a mirror moves it to [0, -1]."""
    counts = [5, 6, 5, 8, 5, 7]
    images = np.zeros((sum(counts), 6, 6), dtype=np.uint8)
    images[:, 0, 0] = np.arange(1, sum(counts) + 1)
    return GroupedImageSet(images=images, class_offsets=np.concatenate([[0], np.cumsum(counts)]),
                           class_names=[f"p{i}" for i in range(len(counts))], name="traceable")


def originals_and_flips(images) -> list[tuple[int, bool]]:
    pixels = np.round(images[:, 0].numpy() * 255).astype(int)
    return [(int(max(p[0, 0], p[0, -1])) - 1, bool(p[0, -1] > 0)) for p in pixels]


@pytest.mark.parametrize(("n_shot", "n_query"), [(1, 6), (5, 4), (2, 2), (3, 3)])
def test_a_photo_and_its_mirror_never_straddle_support_and_query(
        traceable_faces: GroupedImageSet, n_shot: int, n_query: int) -> None:
    sampler = GroupedEpisodeSampler(traceable_faces, 4, n_shot, n_query, seed=0)
    saw_mirror = saw_pair_in_support = False
    for episode in sampler.episodes(200):
        support = originals_and_flips(episode.support_images)
        query = originals_and_flips(episode.query_images)
        assert not {o for o, _ in support} & {o for o, _ in query}, "mirror leaked"
        assert len(set(support)) == len(support) and len(set(query)) == len(query)
        offsets = traceable_faces.class_offsets
        for (original, _), label in zip(support + query,
                                        episode.support_labels.tolist()
                                        + episode.query_labels.tolist(), strict=True):
            person = int(episode.class_indices[label])
            assert offsets[person] <= original < offsets[person + 1]
        saw_mirror |= any(flipped for _, flipped in support + query)
        originals = [o for o, _ in support]
        saw_pair_in_support |= len(set(originals)) < len(originals)
    assert saw_mirror
    assert saw_pair_in_support == (n_shot > 1)


def test_too_few_photos_for_the_request_is_refused(traceable_faces: GroupedImageSet) -> None:
    with pytest.raises(EpisodeError, match="need 3 \\+ 3 distinct photos.*smallest class"):
        GroupedEpisodeSampler(traceable_faces, 5, 5, 5)


@pytest.mark.data
def test_real_lfw_counts_and_paper_split(real_data_dir: Path, real_cache_dir: Path) -> None:
    counts = people_counts(real_data_dir)
    assert len(counts) == LFW_A_TOTALS["people"]
    assert sum(counts.values()) == LFW_A_TOTALS["images"]
    assert sum(n >= 3 for n in counts.values()) == 901
    assert sum(n >= 5 for n in counts.values()) == 423
    train, test = paper_split("train"), paper_split("test")
    assert (len(train), len(test)) == (343, 80) and not set(train) & set(test)
    assert (train, test) == split_people([p for p, n in counts.items() if n >= 5], 80, 0)
    test_set = load_lfw("test", data_dir=real_data_dir, cache_dir=real_cache_dir)
    assert test_set.images.shape[1:] == (84, 84) and test_set.n_classes == 80
    assert len(test_set.images) == sum(counts[p] for p in test)


def test_face_pack_stands_in_for_the_archive_and_refuses_corruption(tmp_path: Path) -> None:
    from gaussmem.data.lfw import pack_faces
    from gaussmem.data.lfw_pack import PACK_NAME

    write_tarball(tmp_path / "full", SYNTHETIC_PEOPLE)
    from_archive = load_lfw_faces(5, data_dir=tmp_path / "full", cache_dir=tmp_path / "c1",
                                  expected_totals=None)
    pack = pack_faces(tmp_path / "packed" / "lfw" / PACK_NAME, data_dir=tmp_path / "full",
                      cache_dir=tmp_path / "c1", expected_totals=None)
    from_pack = load_lfw_faces(5, data_dir=tmp_path / "packed", cache_dir=tmp_path / "c2",
                               expected_totals=None)
    assert np.array_equal(np.asarray(from_pack.array), np.asarray(from_archive.array))
    assert from_pack.metadata == from_archive.metadata
    assert from_pack.directory.name == from_archive.directory.name  # same content key
    assert people_counts(tmp_path / "packed") == SYNTHETIC_PEOPLE
    with pytest.raises(DataError, match="min_images"):
        load_lfw_faces(3, data_dir=tmp_path / "packed", cache_dir=tmp_path / "c3",
                       expected_totals=None)
    with pytest.raises(DataError, match="LFW-a has 5749"):
        load_lfw_faces(5, data_dir=tmp_path / "packed", cache_dir=tmp_path / "c4")
    pack.write_bytes(pack.read_bytes()[:-100])
    with pytest.raises(DataError, match=PACK_NAME):
        load_lfw_faces(5, data_dir=tmp_path / "packed", cache_dir=tmp_path / "c5",
                       expected_totals=None)
