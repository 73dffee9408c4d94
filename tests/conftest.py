"""Shared fixtures: synthetic Omniglot releases, and the real data for `data` tests.

Real-data tests must fail, not skip, where the data is required (CI sets
GAUSSMEM_REQUIRE_DATA=1): a silently skipped integration test would let a broken loader
land.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gaussmem.data.class_images import ClassImageSet
from gaussmem.data.omniglot_source import OmniglotManifest
from gaussmem.plumbing.settings import CACHE_ENV_VAR, DATA_ENV_VAR


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need a CUDA GPU (pyproject's marker): skipped where torch sees
    none, so the marker alone says it, in every file."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


SYNTHETIC_ALPHABETS = {
    "images_background": {"Alpha": 2, "Beta": 1},
    "images_evaluation": {"Gamma": 2},
}


def drawing_png(character_number: int, drawer: int, size: tuple[int, int] = (105, 105)) -> bytes:
    """A 1-bit PNG like the release's (black strokes on white), unique per character and
    drawer and asymmetric, so ordering and rotation mistakes change the pixels."""
    image = Image.new("1", size, 1)
    draw = ImageDraw.Draw(image)
    left = 5 + 4 * drawer
    top = 5 + 9 * character_number
    draw.rectangle([left, top, left + 30, top + 6], fill=0)
    draw.line([left, top, left, min(top + 50, size[1] - 1)], fill=0, width=4)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_members(alphabets: dict[str, dict[str, int]], samples: int = 20
                      ) -> dict[str, bytes]:
    """`{zip member path: PNG bytes}` for a release laid out like the official one."""
    members: dict[str, bytes] = {}
    character_id = 1
    for collection, counts in alphabets.items():
        for alphabet, n_characters in counts.items():
            for number in range(1, n_characters + 1):
                for drawer in range(1, samples + 1):
                    path = (f"{collection}/{alphabet}/character{number:02d}/"
                            f"{character_id:04d}_{drawer:02d}.png")
                    members[path] = drawing_png(character_id % 9, drawer)
                character_id += 1
    return members


def write_release(omniglot_dir: Path, members: dict[str, bytes], as_zip: bool = True) -> None:
    """Write members as `<collection>.zip` files (or extracted folders) in `omniglot_dir`."""
    omniglot_dir.mkdir(parents=True, exist_ok=True)
    collections = sorted({path.split("/")[0] for path in members})
    for collection in collections:
        owned = {p: b for p, b in members.items() if p.startswith(f"{collection}/")}
        if as_zip:
            with zipfile.ZipFile(omniglot_dir / f"{collection}.zip", "w") as archive:
                for path, payload in owned.items():
                    archive.writestr(path, payload)
        else:
            for path, payload in owned.items():
                (omniglot_dir / path).parent.mkdir(parents=True, exist_ok=True)
                (omniglot_dir / path).write_bytes(payload)


SyntheticRelease = Callable[..., tuple[Path, OmniglotManifest]]


@pytest.fixture
def synthetic_release(tmp_path: Path) -> SyntheticRelease:
    """Factory: `make(mutate=None, as_zip=True)` writes a small release under
    `tmp_path/data/omniglot` and returns (data_dir, manifest). `mutate(members)` may edit
    the member dict first to plant a defect."""

    def make(mutate: Callable[[dict[str, bytes]], None] | None = None,
             as_zip: bool = True) -> tuple[Path, OmniglotManifest]:
        members = synthetic_members(SYNTHETIC_ALPHABETS)
        if mutate is not None:
            mutate(members)
        data_dir = tmp_path / "data"
        write_release(data_dir / "omniglot", members, as_zip=as_zip)
        manifest = OmniglotManifest(alphabets=SYNTHETIC_ALPHABETS, samples_per_character=20,
                                    image_size=(105, 105))
        return data_dir, manifest

    return make


def _data_required() -> bool:
    return os.environ.get("GAUSSMEM_REQUIRE_DATA") == "1"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real data directory ($GAUSSMEM_DATA). Missing data fails where it is required."""
    value = os.environ.get(DATA_ENV_VAR)
    folder = Path(value) if value else None
    if folder is None or not (folder / "omniglot").is_dir():
        message = (f"real Omniglot data not found: set ${DATA_ENV_VAR} to a folder holding "
                   f"omniglot/ (got {value!r})")
        if _data_required():
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def real_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$GAUSSMEM_CACHE when set (so CI builds the real cache once), else a session temp dir."""
    value = os.environ.get(CACHE_ENV_VAR)
    return Path(value) if value else tmp_path_factory.mktemp("gaussmem-cache")


def synthetic_set(n_classes: int = 12, seed: int = 0) -> ClassImageSet:
    """Classes = a random template plus per-drawing noise: learnable, tiny."""
    rng = np.random.default_rng(seed)
    templates = rng.random((n_classes, 1, 28, 28)) < 0.15
    noise = rng.random((n_classes, 20, 28, 28)) < 0.03
    images = ((templates ^ noise) * 255).astype(np.uint8)
    return ClassImageSet(images, [f"class{i}" for i in range(n_classes)], "synthetic")
