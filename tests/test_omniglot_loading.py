"""Omniglot reading, verification, splits and caching on small synthetic releases."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import SyntheticRelease, drawing_png
from gaussmem.data.omniglot import load_omniglot, load_omniglot_characters
from gaussmem.data.omniglot_source import Preprocessing
from gaussmem.errors import CacheError, DataError


def expected_pixels(payload: bytes, size: int = 28) -> np.ndarray:
    """The documented preprocessing written out independently: invert, bilinear resize."""
    image = ImageOps.invert(Image.open(io.BytesIO(payload)).convert("L"))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def test_loads_all_characters_in_release_order_with_strokes_bright(
        synthetic_release: SyntheticRelease, tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    cached = load_omniglot_characters(data_dir, tmp_path / "cache", manifest)
    assert cached.array.shape == (5, 20, 28, 28)
    assert cached.array.dtype == np.uint8
    assert cached.metadata["characters"] == [
        "Alpha/character01", "Alpha/character02", "Beta/character01",
        "Gamma/character01", "Gamma/character02"]
    # character 4 (Gamma/character01), drawer 3 is the 3rd image of the 4th class
    np.testing.assert_array_equal(cached.array[3, 2], expected_pixels(drawing_png(4, 3)))
    assert cached.array[0, 0, 0, 0] == 0, "background must be 0 (strokes = 255)"
    assert cached.array.max() > 200


def test_extracted_folders_give_the_same_arrays_as_zips(
        synthetic_release: SyntheticRelease, tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release(as_zip=True)
    from_zip = np.array(load_omniglot_characters(data_dir, tmp_path / "c1", manifest).array)
    for archive in (data_dir / "omniglot").glob("*.zip"):
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(data_dir / "omniglot")
        archive.unlink()
    from_folder = load_omniglot_characters(data_dir, tmp_path / "c2", manifest).array
    np.testing.assert_array_equal(from_zip, from_folder)


def test_truncated_zip_is_named_in_the_error(synthetic_release: SyntheticRelease,
                                             tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    archive = data_dir / "omniglot" / "images_background.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"images_background\.zip.*(truncated|corrupt)"):
        load_omniglot_characters(data_dir, tmp_path / "cache", manifest)
    assert not (tmp_path / "cache" / "omniglot").exists() or not any(
        (tmp_path / "cache" / "omniglot").iterdir()), "nothing half-written"


def test_corrupt_member_is_named_and_leaves_no_cache(synthetic_release: SyntheticRelease,
                                                     tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    archive = data_dir / "omniglot" / "images_evaluation.zip"
    payload = bytearray(archive.read_bytes())
    # Flip bytes inside the first member's stored data: its CRC check then fails.
    with zipfile.ZipFile(archive) as opened:
        first = opened.infolist()[0]
    data_start = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
    for offset in range(data_start + 10, data_start + 20):
        payload[offset] ^= 0xFF
    archive.write_bytes(bytes(payload))
    with pytest.raises(DataError, match=r"images_evaluation\.zip.*character01"):
        load_omniglot_characters(data_dir, tmp_path / "cache", manifest)
    leftovers = list((tmp_path / "cache").rglob("*.npy"))
    assert leftovers == []


def test_damaged_deflate_stream_is_named_and_leaves_no_cache(
        synthetic_release: SyntheticRelease, tmp_path: Path) -> None:
    """Release zips are deflated: a damaged stream fails inside zlib, not at the CRC."""
    data_dir, manifest = synthetic_release()
    archive = data_dir / "omniglot" / "images_evaluation.zip"
    with zipfile.ZipFile(archive) as opened:
        members = {info.filename: opened.read(info) for info in opened.infolist()}
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as deflated:
        for name, payload in members.items():
            deflated.writestr(name, payload)
    with zipfile.ZipFile(archive) as opened:
        second = opened.infolist()[1]
    payload = bytearray(archive.read_bytes())
    data_start = second.header_offset + 30 + len(second.filename.encode()) + len(second.extra)
    # 0xFF opens a deflate block of the reserved type 3: zlib's "invalid block type".
    payload[data_start: data_start + 4] = b"\xff" * 4
    archive.write_bytes(bytes(payload))
    with pytest.raises(DataError) as raised:
        load_omniglot_characters(data_dir, tmp_path / "cache", manifest)
    message = str(raised.value)
    assert "images_evaluation.zip" in message and second.filename.split("/", 1)[1] in message
    assert "\n" not in message and "corrupt" in message
    assert list((tmp_path / "cache").rglob("*.npy")) == []


def test_missing_alphabet_is_named(synthetic_release: SyntheticRelease, tmp_path: Path) -> None:
    def drop_beta(members: dict[str, bytes]) -> None:
        for path in [p for p in members if "/Beta/" in p]:
            del members[path]
    data_dir, manifest = synthetic_release(mutate=drop_beta)
    with pytest.raises(DataError, match="alphabet folder.*missing: Beta"):
        load_omniglot_characters(data_dir, tmp_path / "cache", manifest)


def test_missing_character_folder_is_named(synthetic_release: SyntheticRelease,
                                           tmp_path: Path) -> None:
    def drop_character(members: dict[str, bytes]) -> None:
        for path in [p for p in members if "/Gamma/character02/" in p]:
            del members[path]
    data_dir, manifest = synthetic_release(mutate=drop_character)
    with pytest.raises(DataError, match="Gamma/character02 is missing"):
        load_omniglot_characters(data_dir, tmp_path / "cache", manifest)


def test_missing_drawing_is_named(synthetic_release: SyntheticRelease, tmp_path: Path) -> None:
    def drop_drawer(members: dict[str, bytes]) -> None:
        del members[next(p for p in members if p.endswith("0001_07.png"))]
    data_dir, manifest = synthetic_release(mutate=drop_drawer)
    with pytest.raises(DataError, match=r"Alpha/character01.*missing \[7\]"):
        load_omniglot_characters(data_dir, tmp_path / "cache", manifest)


def test_wrong_image_size_is_named(synthetic_release: SyntheticRelease, tmp_path: Path) -> None:
    def shrink(members: dict[str, bytes]) -> None:
        path = next(p for p in members if p.endswith("0002_05.png"))
        members[path] = drawing_png(2, 5, size=(100, 105))
    data_dir, manifest = synthetic_release(mutate=shrink)
    with pytest.raises(DataError, match=r"0002_05\.png is 100x105; expected 105x105"):
        load_omniglot_characters(data_dir, tmp_path / "cache", manifest)


def test_missing_dataset_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere' / 'omniglot'}.*images_background"):
        load_omniglot("vinyals", "train", data_dir=tmp_path / "nowhere", cache_dir=tmp_path)


def test_unknown_scheme_or_subset_is_rejected(synthetic_release: SyntheticRelease,
                                              tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    with pytest.raises(DataError, match="unknown Omniglot split scheme 'snell'"):
        load_omniglot("snell", "train", data_dir=data_dir, cache_dir=tmp_path, manifest=manifest)
    with pytest.raises(DataError, match="'lake' has no subset 'val'"):
        load_omniglot("lake", "val", data_dir=data_dir, cache_dir=tmp_path, manifest=manifest)


def write_split(folder: Path, subset: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{subset}.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_split_rotations_are_counter_clockwise_quarter_turns(
        synthetic_release: SyntheticRelease, tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    split_dir = write_split(tmp_path / "splits", "train", [
        "Beta/character01/rot000", "Beta/character01/rot090", "Alpha/character02/rot270"])
    dataset = load_omniglot("vinyals", "train", data_dir=data_dir, cache_dir=tmp_path / "c",
                            split_dir=split_dir, manifest=manifest)
    characters = load_omniglot_characters(data_dir, tmp_path / "c", manifest).array
    assert dataset.class_names == ["Beta/character01/rot000", "Beta/character01/rot090",
                                   "Alpha/character02/rot270"]
    np.testing.assert_array_equal(dataset.images[0], characters[2])
    np.testing.assert_array_equal(dataset.images[1], np.rot90(characters[2], 1, axes=(1, 2)))
    np.testing.assert_array_equal(dataset.images[2], np.rot90(characters[1], 3, axes=(1, 2)))


def test_split_naming_an_unknown_character_fails(synthetic_release: SyntheticRelease,
                                                 tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    split_dir = write_split(tmp_path / "splits", "test", ["Alpha/character01/rot000",
                                                          "Alpha/character09/rot090"])
    with pytest.raises(DataError, match=r"test\.txt names 1 character.*'Alpha/character09'"):
        load_omniglot("vinyals", "test", data_dir=data_dir, cache_dir=tmp_path / "c",
                      split_dir=split_dir, manifest=manifest)


def test_malformed_split_line_names_file_and_line(synthetic_release: SyntheticRelease,
                                                  tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    split_dir = write_split(tmp_path / "splits", "val", ["Alpha/character01/rot000",
                                                         "Alpha/character01/rot045"])
    with pytest.raises(DataError, match=r"val\.txt:2: 'Alpha/character01/rot045'"):
        load_omniglot("vinyals", "val", data_dir=data_dir, cache_dir=tmp_path / "c",
                      split_dir=split_dir, manifest=manifest)


def test_lake_scheme_rotates_background_only(synthetic_release: SyntheticRelease,
                                             tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    train = load_omniglot("lake", "train", data_dir=data_dir, cache_dir=tmp_path,
                          manifest=manifest)
    test = load_omniglot("lake", "test", data_dir=data_dir, cache_dir=tmp_path,
                         manifest=manifest)
    assert train.n_classes == 3 * 4
    assert train.class_names[:4] == [f"Alpha/character01/rot{r:03d}" for r in (0, 90, 180, 270)]
    assert test.class_names == ["Gamma/character01/rot000", "Gamma/character02/rot000"]


# --- the cache ---------------------------------------------------------------------------

def test_second_load_hits_the_memory_mapped_cache(synthetic_release: SyntheticRelease,
                                                  tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    first = load_omniglot_characters(data_dir, tmp_path, manifest)
    second = load_omniglot_characters(data_dir, tmp_path, manifest)
    assert (first.status, second.status) == ("built", "hit")
    assert isinstance(second.array, np.memmap)
    np.testing.assert_array_equal(first.array, second.array)


def test_truncated_cache_is_rebuilt_not_trusted(synthetic_release: SyntheticRelease,
                                                tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    data_dir, manifest = synthetic_release()
    good = np.array(load_omniglot_characters(data_dir, tmp_path, manifest).array)
    (array_file,) = tmp_path.rglob("images.npy")
    array_file.write_bytes(array_file.read_bytes()[:-500])
    with caplog.at_level(logging.WARNING):
        again = load_omniglot_characters(data_dir, tmp_path, manifest)
    assert again.status.startswith("rebuilt")
    assert "cannot be trusted" in caplog.text
    np.testing.assert_array_equal(again.array, good)


def test_cache_with_flipped_pixels_is_rebuilt(synthetic_release: SyntheticRelease,
                                              tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    good = np.array(load_omniglot_characters(data_dir, tmp_path, manifest).array)
    (array_file,) = tmp_path.rglob("images.npy")
    payload = bytearray(array_file.read_bytes())
    payload[-1] ^= 0xFF
    array_file.write_bytes(bytes(payload))
    again = load_omniglot_characters(data_dir, tmp_path, manifest)
    assert again.status == "rebuilt: images.npy does not match its recorded checksum"
    np.testing.assert_array_equal(again.array, good)


def test_cache_from_other_parameters_is_rebuilt(synthetic_release: SyntheticRelease,
                                                tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    load_omniglot_characters(data_dir, tmp_path, manifest)
    (meta_file,) = tmp_path.rglob("meta.json")
    meta = json.loads(meta_file.read_text())
    meta["key_payload"]["preprocessing"]["image_size"] = 32
    meta_file.write_text(json.dumps(meta))
    again = load_omniglot_characters(data_dir, tmp_path, manifest)
    assert again.status == "rebuilt: built from other source data or parameters"


def test_other_preprocessing_gets_its_own_cache(synthetic_release: SyntheticRelease,
                                                tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    default = load_omniglot_characters(data_dir, tmp_path, manifest)
    small = load_omniglot_characters(data_dir, tmp_path, manifest, Preprocessing(image_size=20))
    assert small.status == "built" and small.array.shape[-1] == 20
    assert small.directory != default.directory


def test_changed_source_gets_a_new_cache(synthetic_release: SyntheticRelease,
                                         tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    before = load_omniglot_characters(data_dir, tmp_path / "c", manifest)

    def redraw(members: dict[str, bytes]) -> None:
        path = next(p for p in members if p.endswith("0001_01.png"))
        members[path] = drawing_png(7, 19)
    data_dir, manifest = synthetic_release(mutate=redraw)
    after = load_omniglot_characters(data_dir, tmp_path / "c", manifest)
    assert after.status == "built" and after.directory != before.directory
    assert not np.array_equal(after.array[0, 0], before.array[0, 0])


def test_unwritable_cache_directory_is_a_clear_error(synthetic_release: SyntheticRelease,
                                                     tmp_path: Path) -> None:
    data_dir, manifest = synthetic_release()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(CacheError, match="cannot write the cache.*--cache-dir"):
        load_omniglot_characters(data_dir, blocker / "cache", manifest)
