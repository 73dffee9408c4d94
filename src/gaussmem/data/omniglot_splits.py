"""The two standard Omniglot class splits, as lists of (character, rotation) classes.

- `vinyals` (Matching Networks, Prototypical Networks, and Tseran & Harada): the
  committed split files shipped in `gaussmem/data/splits/vinyals/` (from Snell et al.'s
  code, MIT), 1,028 / 172 / 1,200 / 423 characters for train / val / trainval / test, each
  rotation 0/90/180/270 its own class: 4112 / 688 / 4800 / 1692 classes.
- `lake` (Kaiser et al. 2017): the background alphabets with 4 rotations for training
  (3856 classes) and the evaluation alphabets unrotated for testing (659 classes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gaussmem.errors import DataError

ROTATIONS: tuple[int, ...] = (0, 90, 180, 270)
SCHEME_SUBSETS: dict[str, tuple[str, ...]] = {
    "vinyals": ("train", "val", "trainval", "test"),
    "lake": ("train", "test"),
}
_SPLIT_LINE = re.compile(r"^(?P<alphabet>[^/]+)/(?P<character>character\d+)/rot(?P<rot>\d{3})$")


@dataclass(frozen=True)
class SplitClass:
    """One class of a split: a character (`"Alphabet/characterNN"`) at a rotation (degrees)."""

    character: str
    rotation: int

    @property
    def name(self) -> str:
        return f"{self.character}/rot{self.rotation:03d}"


def check_scheme_subset(scheme: str, subset: str) -> None:
    """Raise `DataError` unless `scheme` and `subset` name a known split."""
    if scheme not in SCHEME_SUBSETS:
        raise DataError(f"unknown Omniglot split scheme {scheme!r}; "
                        f"choose one of {sorted(SCHEME_SUBSETS)}")
    if subset not in SCHEME_SUBSETS[scheme]:
        raise DataError(f"split scheme {scheme!r} has no subset {subset!r}; "
                        f"choose one of {list(SCHEME_SUBSETS[scheme])}")


def read_split_file(path: Path | str, text: str | None = None) -> list[SplitClass]:
    """Parse a split file of `Alphabet/characterNN/rotDDD` lines (blank lines ignored)."""
    if text is None:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise DataError(f"cannot read split file {path}: {error}") from error
    classes = []
    for line_number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            continue
        match = _SPLIT_LINE.match(line)
        if match is None or int(match["rot"]) not in ROTATIONS:
            raise DataError(f"{path}:{line_number}: {line!r} is not "
                            "Alphabet/characterNN/rotDDD with DDD in 000/090/180/270")
        classes.append(SplitClass(f"{match['alphabet']}/{match['character']}",
                                  int(match["rot"])))
    return classes


def vinyals_classes(subset: str, split_dir: Path | None = None) -> tuple[list[SplitClass], str]:
    """The classes of a `vinyals` subset, and where they were read from.

    `split_dir` overrides the packaged split files (a folder with `<subset>.txt`).
    """
    check_scheme_subset("vinyals", subset)
    if split_dir is not None:
        path = Path(split_dir) / f"{subset}.txt"
        return read_split_file(path), str(path)
    resource = resources.files("gaussmem.data").joinpath("splits", "vinyals", f"{subset}.txt")
    return read_split_file(f"gaussmem/data/splits/vinyals/{subset}.txt",
                           resource.read_text()), f"package:vinyals/{subset}.txt"


def lake_classes(subset: str, background_characters: Sequence[str],
                 evaluation_characters: Sequence[str]) -> list[SplitClass]:
    """The classes of a `lake` subset: background x 4 rotations, or evaluation unrotated."""
    check_scheme_subset("lake", subset)
    if subset == "train":
        return [SplitClass(character, rotation)
                for character in background_characters for rotation in ROTATIONS]
    return [SplitClass(character, 0) for character in evaluation_characters]
