"""LFW-a (the paper's Table 3): grayscale aligned faces, people as classes.

Source: `<data dir>/lfw/lfwa.tar.gz` (or the extracted `lfw2/` folder), laid out as
`lfw2/<Person>/<Person>_NNNN.jpg`, 250x250 grayscale. The paper keeps people with
"3 or more images", mirrors every image and resizes to 84x84, with 343 people for
training and 80 for testing; but 343 + 80 = 423 is the number of people with at least
5 images (901 have at least 3), so the `paper` split uses `min_images=5`: a committed
343/80 split of those 423 people (sorted names, permuted with seed 0).

The paper selects no model, but gaussmem never selects on test people, so the 343
training people are split once more, deterministically, into `fit` (300 people, what
the presets train on) and `val` (43 people, for picking the best checkpoint); `train`
is all 343 (what a final run without model selection may use).
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import zlib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from gaussmem.data.array_cache import CachedArray, load_or_build
from gaussmem.data.datasets import register_dataset
from gaussmem.data.grouped_images import GroupedImageSet
from gaussmem.data.lfw_pack import PACK_NAME, read_face_pack, read_face_pack_meta, write_face_pack
from gaussmem.errors import DataError
from gaussmem.plumbing.settings import resolve_cache_dir, resolve_data_dir

LFW_FOLDER = "lfw"
LFW_A_TOTALS = {"people": 5749, "images": 13233}
PAPER_TRAIN_PEOPLE, PAPER_TEST_PEOPLE = 343, 80
#: Training people held out of `fit` for model selection (`val`), and the seed of that cut.
PAPER_VAL_PEOPLE, VAL_SEED = 43, 1
LFW_SUBSETS = ("train", "test", "fit", "val")
_MEMBER = re.compile(r"^lfw2/(?P<person>[^/]+)/(?P=person)_(?P<number>\d{4})\.jpg$")


@dataclass(frozen=True)
class FacePreprocessing:
    """250x250 photo -> `image_size` square, Pillow bilinear (antialiased when shrinking);
    part of the cache key."""

    image_size: int = 84
    source_size: int = 250


def lfw_source(data_dir: Path | str | None = None) -> Path:
    """The tarball, else the extracted folder, else a face pack (gaussmem.data.lfw_pack),
    or a `DataError` saying where it looked."""
    folder = resolve_data_dir(data_dir) / LFW_FOLDER
    for candidate in (folder / "lfwa.tar.gz", folder / "lfw2", folder / PACK_NAME):
        if candidate.exists():
            return candidate
    raise DataError(f"LFW-a not found: looked for {folder / 'lfwa.tar.gz'}, "
                    f"{folder / 'lfw2'}/ and {folder / PACK_NAME}. Put the LFW-a archive "
                    "(lfwa.tar.gz, which unpacks to lfw2/<Person>/<Person>_NNNN.jpg) there, "
                    "or a face pack made by `gaussmem data pack-lfw`.")


def _is_pack(source: Path) -> bool:
    return source.name == PACK_NAME


def read_photos(source: Path) -> dict[str, dict[int, bytes]]:
    """`{person: {number: jpeg bytes}}` for every photo, checking the layout."""
    photos: dict[str, dict[int, bytes]] = {}

    def add(name: str, payload: bytes) -> None:
        match = _MEMBER.match(name)
        if match is None:
            raise DataError(f"{source}: unexpected entry {name!r} (expected "
                            "lfw2/<Person>/<Person>_NNNN.jpg)")
        photos.setdefault(match["person"], {})[int(match["number"])] = payload

    if source.is_dir():
        for path in sorted(source.rglob("*.jpg")):
            add(f"lfw2/{path.relative_to(source).as_posix()}", path.read_bytes())
        return photos
    try:
        with tarfile.open(source, "r:gz") as archive:
            for member in archive:
                if member.isfile():
                    handle = archive.extractfile(member)
                    add(member.name, handle.read() if handle else b"")
    except (tarfile.TarError, zlib.error, OSError, EOFError) as error:
        raise DataError(f"{source} is not a readable .tar.gz ({error}); it is truncated or "
                        "corrupt. Replace it with the LFW-a archive.") from error
    return photos


def check_numbering(source: Path, photos: dict[str, dict[int, bytes]],
                    expected_totals: dict[str, int] | None) -> None:
    """Each person's photos are numbered 1..N without gaps; totals match when given."""
    for person, numbered in photos.items():
        if sorted(numbered) != list(range(1, len(numbered) + 1)):
            raise DataError(f"{source}: {person}'s photos are numbered {sorted(numbered)[:8]}..., "
                            "expected 0001..N without gaps")
    if expected_totals is not None:
        found = {"people": len(photos), "images": sum(map(len, photos.values()))}
        if found != expected_totals:
            raise DataError(f"{source}: found {found['people']} people and {found['images']} "
                            f"images; LFW-a has {expected_totals['people']} and "
                            f"{expected_totals['images']}")


def people_counts(data_dir: Path | str | None = None) -> dict[str, int]:
    """Photos per person, read from the layout alone (no decoding); a face pack records
    them for the whole archive."""
    source = lfw_source(data_dir)
    if _is_pack(source):
        return dict(read_face_pack_meta(source)["all_counts"])
    return {person: len(numbered) for person, numbered in read_photos(source).items()}


def _decode(source: Path, person: str, number: int, payload: bytes,
            preprocessing: FacePreprocessing) -> np.ndarray:
    label = f"{person}/{person}_{number:04d}.jpg"
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            if image.size != (preprocessing.source_size, preprocessing.source_size):
                raise DataError(f"{source}: {label} is {image.size[0]}x{image.size[1]}; "
                                f"expected {preprocessing.source_size}x"
                                f"{preprocessing.source_size}")
            gray = image.convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"{source}: {label} is not a readable JPEG ({error})") from error
    size = (preprocessing.image_size, preprocessing.image_size)
    return np.asarray(gray.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


def load_lfw_faces(min_images: int = 5, *, data_dir: Path | str | None = None,
                   cache_dir: Path | str | None = None,
                   preprocessing: FacePreprocessing | None = None,
                   expected_totals: dict[str, int] | None = LFW_A_TOTALS) -> CachedArray:
    """Photos of every person with at least `min_images`, `(n_photos, size, size)` uint8,
    people in sorted order, cached; metadata holds `people` and `counts`."""
    if min_images < 1:
        raise DataError(f"min_images must be >= 1, got {min_images}")
    preprocessing = preprocessing or FacePreprocessing()
    source = lfw_source(data_dir)
    if _is_pack(source):
        return _load_pack(source, min_images, preprocessing, expected_totals, cache_dir)
    key_payload = _cache_key_payload(_fingerprint(source), min_images, preprocessing,
                                     expected_totals)

    def build() -> tuple[np.ndarray, dict]:
        photos = read_photos(source)
        check_numbering(source, photos, expected_totals)
        people = sorted(p for p, numbered in photos.items() if len(numbered) >= min_images)
        if not people:
            raise DataError(f"{source}: nobody has {min_images} or more photos")
        jobs = [(person, number) for person in people for number in sorted(photos[person])]
        images = np.stack([_decode(source, person, number, photos[person][number],
                                   preprocessing)
                           for person, number in tqdm(jobs, desc="preprocessing LFW-a",
                                                      unit="img", disable=None)])
        return images, {"people": people, "counts": [len(photos[p]) for p in people]}

    return load_or_build(resolve_cache_dir(cache_dir), "lfw", key_payload, build)


def _cache_key_payload(source_sha256: str | None, min_images: int,
                       preprocessing: FacePreprocessing,
                       expected_totals: dict[str, int] | None) -> dict:
    """What the faces cache is keyed by; one function, so an archive and the face pack
    made from it always name the same cache."""
    return {"source": source_sha256, "min_images": min_images,
            "preprocessing": asdict(preprocessing), "expected_totals": expected_totals}


def _load_pack(pack: Path, min_images: int, preprocessing: FacePreprocessing,
               expected_totals: dict[str, int] | None, cache_dir: Path | str | None
               ) -> CachedArray:
    """`load_lfw_faces` from a face pack: the same cache key as from the archive it was
    made from, so a machine with either gets the same cached arrays."""
    meta = read_face_pack_meta(pack)
    all_counts = meta.get("all_counts", {})
    found = {"people": len(all_counts), "images": sum(all_counts.values())}
    if expected_totals is not None and found != expected_totals:
        raise DataError(f"{pack} was made from an archive of {found['people']} people and "
                        f"{found['images']} images; LFW-a has {expected_totals['people']} "
                        f"and {expected_totals['images']}")
    key_payload = _cache_key_payload(meta.get("source_sha256"), min_images, preprocessing,
                                     expected_totals)
    return load_or_build(resolve_cache_dir(cache_dir), "lfw", key_payload,
                         lambda: read_face_pack(pack, min_images, asdict(preprocessing)))


def pack_faces(out: Path | str, min_images: int = 5, *, data_dir: Path | str | None = None,
               cache_dir: Path | str | None = None,
               preprocessing: FacePreprocessing | None = None,
               expected_totals: dict[str, int] | None = LFW_A_TOTALS) -> Path:
    """Write the preprocessed faces of everyone with `min_images` photos to a face pack
    at `out` (see gaussmem.data.lfw_pack); needs the archive or its extracted folder."""
    preprocessing = preprocessing or FacePreprocessing()
    source = lfw_source(data_dir)
    if _is_pack(source):
        raise DataError(f"{source} is already a face pack; packing needs the LFW-a archive")
    cached = load_lfw_faces(min_images, data_dir=data_dir, cache_dir=cache_dir,
                            preprocessing=preprocessing, expected_totals=expected_totals)
    return write_face_pack(Path(out), np.asarray(cached.array),
                           people=cached.metadata["people"], counts=cached.metadata["counts"],
                           all_counts=people_counts(data_dir), min_images=min_images,
                           preprocessing=asdict(preprocessing),
                           source_fingerprint=_fingerprint(source))


def _fingerprint(source: Path) -> str:
    digest = hashlib.sha256()
    if source.is_file():
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    else:
        for path in sorted(source.rglob("*.jpg")):
            stat = path.stat()
            digest.update(f"{path.relative_to(source)}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def split_people(people: list[str], n_test: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic person split: sort the names, permute with `seed`, the last `n_test`
    are test. Sorting first makes it independent of any set or file order."""
    ordered = sorted(people)
    if not 0 < n_test < len(ordered):
        raise DataError(f"cannot hold out {n_test} of {len(ordered)} people for testing")
    permuted = [ordered[i] for i in np.random.Generator(np.random.PCG64(seed)).permutation(
        len(ordered))]
    return sorted(permuted[:-n_test]), sorted(permuted[-n_test:])


def paper_split(subset: str) -> list[str]:
    """The committed 343/80 person split of the `paper` preset (`min_images=5`), and the
    fit/val cut of its 343 training people (see the module docstring)."""
    if subset not in LFW_SUBSETS:
        raise DataError(f"LFW-a split 'paper' has subsets {', '.join(LFW_SUBSETS)}, "
                        f"not {subset!r}")
    if subset in ("fit", "val"):
        fit, val = split_people(paper_split("train"), PAPER_VAL_PEOPLE, VAL_SEED)
        return fit if subset == "fit" else val
    text = resources.files("gaussmem.data").joinpath("splits", "lfw", f"{subset}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_lfw(subset: str = "train", *, split: str = "paper", min_images: int = 5,
             n_test: int = PAPER_TEST_PEOPLE, seed: int = 0, mirror: bool = True,
             data_dir: Path | str | None = None, cache_dir: Path | str | None = None,
             preprocessing: FacePreprocessing | None = None,
             expected_totals: dict[str, int] | None = LFW_A_TOTALS) -> GroupedImageSet:
    """A person split of LFW-a as a `GroupedImageSet` (photo + mirror = one group).

    `split="paper"` reads the committed split (and needs `min_images=5`); `"generated"`
    splits the people with at least `min_images` photos by `split_people(n_test, seed)`.
    """
    if split == "paper" and min_images != 5:
        raise DataError(f"the paper split is of the 423 people with >= 5 photos; got "
                        f"min_images={min_images} (use split='generated')")
    if split not in ("paper", "generated"):
        raise DataError(f"unknown LFW-a split {split!r}; choose 'paper' or 'generated'")
    cached = load_lfw_faces(min_images, data_dir=data_dir, cache_dir=cache_dir,
                            preprocessing=preprocessing, expected_totals=expected_totals)
    people: list[str] = cached.metadata["people"]
    if split == "paper":
        chosen = paper_split(subset)
    else:
        train, test = split_people(people, n_test, seed)
        if subset in ("fit", "val"):
            fit, val = split_people(train, PAPER_VAL_PEOPLE, VAL_SEED)
            chosen = fit if subset == "fit" else val
        else:
            chosen = {"train": train, "test": test}.get(subset)
        if chosen is None:
            raise DataError(f"LFW-a has subsets {', '.join(LFW_SUBSETS)}, not {subset!r}")
    return _select_people(cached, chosen, f"lfw/{split}/{subset}", mirror)


def _select_people(cached: CachedArray, chosen: list[str], name: str,
                   mirror: bool) -> GroupedImageSet:
    people: list[str] = cached.metadata["people"]
    counts = np.asarray(cached.metadata["counts"], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    index_of = {person: i for i, person in enumerate(people)}
    unknown = [p for p in chosen if p not in index_of]
    if unknown:
        raise DataError(f"split {name} names {len(unknown)} people the data does not have "
                        f"enough photos of, e.g. {unknown[0]!r}")
    rows = np.concatenate([np.arange(offsets[index_of[p]], offsets[index_of[p] + 1])
                           for p in chosen])
    chosen_counts = counts[[index_of[p] for p in chosen]]
    return GroupedImageSet(images=np.asarray(cached.array[rows]),
                           class_offsets=np.concatenate([[0], np.cumsum(chosen_counts)]),
                           class_names=list(chosen), name=name, mirror=mirror)


@register_dataset("lfw", image_kind="photo")
def load_lfw_split(scheme: str, subset: str, *, data_dir: Path | str | None = None,
                   cache_dir: Path | str | None = None) -> GroupedImageSet:
    """`load_lfw` as `data.scheme` and `data.train_subset`/`val_subset` name it."""
    if scheme not in ("paper", "generated"):
        raise DataError(f"LFW-a splits are 'paper' and 'generated', not data.scheme="
                        f"{scheme!r}; start from an LFW preset (lfw-5way, lfw-cpu, "
                        "<method>-lfw-cpu), which sets it")
    return load_lfw(subset, split=scheme, data_dir=data_dir, cache_dir=cache_dir)
