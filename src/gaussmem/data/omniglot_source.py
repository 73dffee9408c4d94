"""Read and verify the official Omniglot release, zipped or extracted.

The release is two collections, `images_background` (30 alphabets, 964 characters) and
`images_evaluation` (20 alphabets, 659 characters), laid out as
`<collection>/<Alphabet>/characterNN/<id>_<nn>.png` with 20 drawers per character and
105x105 1-bit images (strokes black). Copies of the zips differ in bytes (re-encoded
PNGs, other timestamps), so the release is verified by content against a manifest of
alphabets and character counts (`omniglot_manifest.json`), the drawer numbering, and each
image's size, never by checksum.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gaussmem.errors import DataError

COLLECTIONS: tuple[str, ...] = ("images_background", "images_evaluation")
_MEMBER_NAME = re.compile(r"^(?P<id>\d+)_(?P<drawer>\d+)\.png$")


@dataclass(frozen=True)
class OmniglotManifest:
    """What a complete release holds: alphabets with their character counts, per collection."""

    alphabets: dict[str, dict[str, int]]  # collection -> alphabet -> number of characters
    samples_per_character: int
    image_size: tuple[int, int]

    @classmethod
    def official(cls) -> OmniglotManifest:
        """The manifest of the official release, shipped with the package."""
        text = resources.files("gaussmem.data").joinpath("omniglot_manifest.json").read_text()
        raw = json.loads(text)
        return cls(
            alphabets={name: dict(counts) for name, counts in raw["collections"].items()},
            samples_per_character=int(raw["samples_per_character"]),
            image_size=(int(raw["image_size"][0]), int(raw["image_size"][1])),
        )

    def n_characters(self, collection: str) -> int:
        return sum(self.alphabets[collection].values())


@dataclass(frozen=True)
class CharacterFiles:
    """One character's drawings: `"Alphabet/characterNN"` and its PNG members by drawer."""

    name: str
    collection: str
    members: tuple[str, ...]


class CollectionSource:
    """One collection, read from `<dir>/<collection>.zip` or the extracted `<dir>/<collection>/`.

    The zip is preferred when both exist: it is what the release ships and what the
    cache key fingerprints by content.
    """

    def __init__(self, omniglot_dir: Path, collection: str) -> None:
        self.collection = collection
        zip_path = omniglot_dir / f"{collection}.zip"
        folder_path = omniglot_dir / collection
        if zip_path.is_file():
            self.path = zip_path
            self._zip: zipfile.ZipFile | None = _open_zip(zip_path)
        elif folder_path.is_dir():
            self.path = folder_path
            self._zip = None
        else:
            raise DataError(
                f"Omniglot collection {collection!r} not found: looked for {zip_path} and "
                f"{folder_path}/. Put the official {collection}.zip there (see "
                "`gaussmem data download --help`)."
            )

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def member_paths(self) -> list[str]:
        """Every PNG below the collection, as `Alphabet/characterNN/file.png`."""
        if self._zip is not None:
            prefix = f"{self.collection}/"
            return [name[len(prefix):] for name in self._zip.namelist()
                    if name.startswith(prefix) and name.endswith(".png")]
        return [path.relative_to(self.path).as_posix() for path in self.path.rglob("*.png")]

    def read(self, member: str) -> bytes:
        """The bytes of one PNG; a damaged archive raises `DataError` naming the member.

        A damaged deflate stream fails in zlib, an unknown compression method with
        NotImplementedError and an encrypted member with RuntimeError: all mean a copy
        that is not the release.
        """
        try:
            if self._zip is not None:
                return self._zip.read(f"{self.collection}/{member}")
            return (self.path / member).read_bytes()
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
                NotImplementedError, RuntimeError) as error:
            raise DataError(f"{self.path}: cannot read {member} ({error}); the file is "
                            "corrupt. Replace it with the official file.") from error

    def fingerprint(self) -> str:
        """A digest of the source: SHA-256 of the zip's bytes, or of the folder's file
        list with sizes and modification times (hashing 13k-19k small files on every
        load would cost seconds)."""
        digest = hashlib.sha256()
        if self._zip is not None:
            with open(self.path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        else:
            for path in sorted(self.path.rglob("*.png")):
                stat = path.stat()
                digest.update(f"{path.relative_to(self.path)}\0{stat.st_size}\0"
                              f"{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise DataError(
            f"{zip_path} is not a readable zip ({error}); it is truncated or corrupt. "
            "Replace it with the official file."
        ) from error


def index_collection(source: CollectionSource, manifest: OmniglotManifest) -> list[CharacterFiles]:
    """List a collection's characters in release order, checking it against the manifest.

    Raises `DataError` naming the source and the missing or unexpected alphabet,
    character folder or drawing.
    """
    expected = manifest.alphabets[source.collection]
    by_character: dict[tuple[str, str], list[str]] = {}
    for member in source.member_paths():
        parts = member.split("/")
        if len(parts) != 3:
            raise DataError(f"{source.path}: unexpected file {member!r} (expected "
                            "Alphabet/characterNN/<id>_<nn>.png)")
        by_character.setdefault((parts[0], parts[1]), []).append(member)
    found_alphabets = {alphabet for alphabet, _ in by_character}
    missing = sorted(set(expected) - found_alphabets)
    if missing:
        raise DataError(f"{source.path}: alphabet folder(s) missing: {', '.join(missing)} "
                        f"(expected {len(expected)} alphabets)")
    unexpected = sorted(found_alphabets - set(expected))
    if unexpected:
        raise DataError(f"{source.path}: unexpected alphabet folder(s): {', '.join(unexpected)}")
    characters: list[CharacterFiles] = []
    for alphabet, n_characters in expected.items():
        for number in range(1, n_characters + 1):
            folder = f"character{number:02d}"
            members = by_character.pop((alphabet, folder), None)
            if members is None:
                raise DataError(f"{source.path}: character folder {alphabet}/{folder} is "
                                f"missing (expected {n_characters} characters in {alphabet})")
            characters.append(CharacterFiles(
                name=f"{alphabet}/{folder}", collection=source.collection,
                members=_ordered_drawings(source, alphabet, folder, members, manifest)))
    if by_character:
        extra = ", ".join(sorted(f"{a}/{c}" for a, c in by_character)[:5])
        raise DataError(f"{source.path}: unexpected character folder(s): {extra}")
    return characters


def _ordered_drawings(source: CollectionSource, alphabet: str, folder: str,
                      members: list[str], manifest: OmniglotManifest) -> tuple[str, ...]:
    """The character's PNG members sorted by drawer number 1..samples_per_character."""
    by_drawer: dict[int, str] = {}
    for member in members:
        match = _MEMBER_NAME.match(member.rsplit("/", 1)[1])
        if match is None:
            raise DataError(f"{source.path}: unexpected file name {member!r} "
                            "(expected <id>_<nn>.png)")
        by_drawer[int(match["drawer"])] = member
    expected_drawers = set(range(1, manifest.samples_per_character + 1))
    if set(by_drawer) != expected_drawers:
        missing = sorted(expected_drawers - set(by_drawer))
        raise DataError(
            f"{source.path}: {alphabet}/{folder} has drawers {sorted(by_drawer)}; "
            f"expected 1..{manifest.samples_per_character}"
            + (f" (missing {missing})" if missing else ""))
    return tuple(by_drawer[drawer] for drawer in sorted(by_drawer))


@dataclass(frozen=True)
class Preprocessing:
    """How a 105x105 release image becomes a model input; part of the cache key.

    `resample="bilinear"` is Pillow's bilinear filter, which widens its triangle kernel
    when shrinking (an antialiased, area-weighted average over the ~3.75x3.75 source
    pixels of each output pixel), so thin strokes fade to grey instead of vanishing.
    """

    image_size: int = 28
    resample: str = "bilinear"

    def resample_filter(self) -> Image.Resampling:
        try:
            return Image.Resampling[self.resample.upper()]
        except KeyError:
            raise ValueError(f"unknown resample filter {self.resample!r}; use one of "
                             f"{[f.name.lower() for f in Image.Resampling]}") from None


def decode_drawing(payload: bytes, member: str, source: CollectionSource,
                   manifest: OmniglotManifest, preprocessing: Preprocessing) -> np.ndarray:
    """Decode one PNG into a `(image_size, image_size)` uint8 array, strokes = 255.

    The release draws strokes black on white; the papers use strokes = 1 so that the
    background is the zero the network starts from.
    """
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            if image.size != manifest.image_size:
                raise DataError(f"{source.path}: {member} is {image.size[0]}x{image.size[1]}; "
                                f"expected {manifest.image_size[0]}x{manifest.image_size[1]}")
            strokes_bright = ImageOps.invert(image.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"{source.path}: {member} is not a readable PNG ({error})") from error
    size = (preprocessing.image_size, preprocessing.image_size)
    return np.asarray(strokes_bright.resize(size, preprocessing.resample_filter()), dtype=np.uint8)
