"""The recognizer: enrollment rule, unknown rejection, gallery files, image inputs, CLI."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import synthetic_set
from gaussmem import memory_in_order
from gaussmem.checkpoint import load_checkpoint, save_checkpoint
from gaussmem.data.datasets import load_split
from gaussmem.errors import CheckpointError, GalleryError, ImageError
from gaussmem.gallery_file import MANIFEST_NAME, MEMORY_NAME
from gaussmem.gallery_journal import (
    CalibrateRecord,
    EnrollRecord,
    JournalWriter,
    RemoveRecord,
    start_journal,
)
from gaussmem.gallery_search import ExactSearch, nearest_labels
from gaussmem.memory import GaussianMemory
from gaussmem.memory_in_order import update_in_order_
from gaussmem.preprocess import ImagePreprocessing, is_dark_on_light, prepare_image
from gaussmem.presets import preset
from gaussmem.recognizer import Recognizer
from gaussmem.train import train
from gaussmem.unknown import Calibration, calibrate_threshold

SRC = Path(__file__).resolve().parents[1] / "src"


# --- a model trained for seconds on synthetic drawings -----------------------------------
@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    run = tmp_path_factory.mktemp("recognizer-smoke") / "run"
    try:
        train(preset("smoke"), run, synthetic_set(), synthetic_set(), progress=False)
    finally:  # train() sets the process's threads; the other tests keep theirs
        torch.set_num_threads(threads)
    return run / "checkpoints" / "last.ckpt"


def drawing_files(folder: Path, n_classes: int = 4, per_class: int = 2) -> dict[str, list[Path]]:
    """Synthetic drawings saved as dark-on-light 56x56 RGB PNGs, as a user has them."""
    dataset = synthetic_set(n_classes)
    files: dict[str, list[Path]] = {}
    for index in range(n_classes):
        (folder / f"class{index}").mkdir(parents=True, exist_ok=True)
        for drawer in range(per_class):
            image = Image.fromarray(255 - dataset.images[index, drawer]).resize((56, 56))
            path = folder / f"class{index}" / f"{drawer}.png"
            image.convert("RGB").save(path)
            files.setdefault(f"class{index}", []).append(path)
    return files


# --- the memory rule on synthetic Gaussians ----------------------------------------------
def _recognizer(checkpoint: Path) -> Recognizer:
    return Recognizer.from_checkpoint(checkpoint)


def test_known_label_merges_and_confused_example_gets_its_own_entry(
        smoke_checkpoint: Path) -> None:
    recognizer = _recognizer(smoke_checkpoint)
    dim = recognizer.content_dim
    ones = torch.ones(1, dim)
    first = recognizer.enroll_encoded(["a"], torch.zeros(1, dim), ones)
    assert (first.n_new_entries, first.n_merged) == (1, 0)
    merged = recognizer.enroll_encoded(["a"], torch.full((1, dim), 0.2), ones)
    assert (merged.n_new_entries, merged.n_merged) == (1 - 1, 1)
    slot = int(recognizer.memory.valid.nonzero()[0, 0])
    # Moment matching of two equal-weight unit Gaussians at 0 and 0.2.
    assert torch.allclose(recognizer.memory.means[slot], torch.full((dim,), 0.1))
    assert torch.allclose(recognizer.memory.variances[slot], torch.full((dim,), 1.01))
    recognizer.enroll_encoded(["b"], torch.full((1, dim), 5.0), ones)
    confused = recognizer.enroll_encoded(["a"], torch.full((1, dim), 4.9), ones)
    assert confused.n_new_entries == 1
    assert recognizer.labels() == {"a": 3, "b": 1}
    assert len(recognizer.memory) == 3


def test_one_batch_merges_a_new_labels_later_examples_into_its_first(
        smoke_checkpoint: Path) -> None:
    recognizer = _recognizer(smoke_checkpoint)
    dim = recognizer.content_dim
    mu = torch.cat([torch.zeros(2, dim), torch.full((1, dim), 9.0)])
    report = recognizer.enroll_encoded(["c", "c", "d"], mu, torch.ones(3, dim))
    assert (report.n_new_entries, report.n_merged) == (2, 1)
    assert recognizer.labels() == {"c": 2, "d": 1}


def test_gallery_grows_past_its_initial_capacity(smoke_checkpoint: Path) -> None:
    recognizer = _recognizer(smoke_checkpoint)
    dim = recognizer.content_dim
    mu = torch.arange(300.0)[:, None].expand(300, dim) * 10
    recognizer.enroll_encoded([f"l{i}" for i in range(300)], mu, torch.ones(300, dim))
    assert len(recognizer.memory) == 300 <= recognizer.memory.capacity
    result = recognizer.recognize_encoded(mu[123:124], torch.ones(1, dim), k=3)[0]
    assert result.label == "l123" and result.similarity == pytest.approx(1.0)


MEMORY_BUFFERS = ("means", "variances", "labels", "counts", "ages", "valid")


def _one_at_a_time(memory: GaussianMemory, mu: torch.Tensor, var: torch.Tensor,
                   labels: torch.Tensor) -> list[int]:
    return [int(memory.update_(mu[i:i + 1], var[i:i + 1], labels[i:i + 1])[0])
            for i in range(len(labels))]


@pytest.mark.parametrize("chunk", [7, 1024])
@pytest.mark.parametrize("seed", range(3))
def test_in_order_batch_equals_one_item_at_a_time(seed: int, chunk: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched enrollment against the rule applied image by image: same slots and
    the same buffers bit for bit. The batch mixes new and known labels, repeats, examples
    of a new label that land near another label's entry created earlier in the same
    batch (confused: an entry of their own), and items whose nearest entry the batch
    already changed; in one pass or in passes of seven."""
    monkeypatch.setattr(memory_in_order, "_CHUNK", chunk)
    generator = torch.Generator().manual_seed(seed)
    dim = 6
    centres = 3 * torch.randn(5, dim, generator=generator)
    before = GaussianMemory(64, dim, seed=0)
    before.update_(centres[:3], torch.ones(3, dim), torch.tensor([0, 1, 2]))
    labels = torch.randint(5, (40,), generator=generator)
    mu = centres[labels] + 0.7 * torch.randn(40, dim, generator=generator)
    var = torch.exp(0.5 * torch.randn(40, dim, generator=generator))
    # Label 7 is new, and its examples sit on label 4's examples of this batch.
    confused = (labels == 4).nonzero()[:, 0][1:3]
    labels[confused] = 7
    mu[confused] += 0.01
    batched, sequential = copy.deepcopy(before), copy.deepcopy(before)
    slots = update_in_order_(batched, mu, var, labels)
    assert slots.tolist() == _one_at_a_time(sequential, mu, var, labels)
    for name in MEMORY_BUFFERS:
        assert torch.equal(getattr(batched, name), getattr(sequential, name)), name
    assert (batched.labels == 7).sum() >= 1 and (batched.counts > 1).any()


@pytest.mark.parametrize("seed", range(4))
def test_in_order_batch_of_known_labels_with_several_examples_each(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several examples of each of a gallery's labels in one batch: an example's nearest
    entry before the batch is often the one an earlier example just merged into, so
    unless that moved entry is nearer it needs the nearest entry the batch left alone (a
    second search, beyond the entries it knows), and runs of items end where an earlier
    item changed what a later one was compared with. Same slots and buffers as the
    rule applied image by image, bit for bit, and the second search did run."""
    searches = []
    learn = memory_in_order._Items.learn_

    def counted_learn(items: memory_in_order._Items, rows: torch.Tensor,
                      changed: torch.Tensor) -> None:
        searches.append(len(rows))
        learn(items, rows, changed)

    monkeypatch.setattr(memory_in_order._Items, "learn_", counted_learn)
    generator = torch.Generator().manual_seed(seed)
    dim, n_labels = 6, 12
    centres = 2 * torch.randn(n_labels, dim, generator=generator)
    entry_labels = torch.arange(n_labels).repeat_interleave(3)
    before = GaussianMemory(256, dim, seed=0)
    before.update_(centres[entry_labels] + 0.8 * torch.randn(len(entry_labels), dim,
                                                             generator=generator),
                   torch.exp(0.3 * torch.randn(len(entry_labels), dim, generator=generator)),
                   entry_labels)
    labels = torch.randint(n_labels + 3, (60,), generator=generator)  # three labels new
    centre = torch.where((labels < n_labels)[:, None],
                         centres[labels.clamp(max=n_labels - 1)], 0.0)
    mu = centre + torch.randn(60, dim, generator=generator)
    var = torch.exp(0.3 * torch.randn(60, dim, generator=generator))
    batched, sequential = copy.deepcopy(before), copy.deepcopy(before)
    slots = update_in_order_(batched, mu, var, labels)
    assert slots.tolist() == _one_at_a_time(sequential, mu, var, labels)
    for name in MEMORY_BUFFERS:
        assert torch.equal(getattr(batched, name), getattr(sequential, name)), name
    assert len(searches) >= 2


def test_in_order_item_whose_nearest_entry_moved_away_merges_into_the_next() -> None:
    """Label 1's example is nearest to label 0's entry, so on its own it would get an
    entry of its own; but label 0's example before it in the batch moves that entry
    away, which leaves label 1's entry the nearest, and the loop merges into it."""
    before = GaussianMemory(8, 1, seed=0)
    before.update_(torch.tensor([[0.0], [3.0]]), torch.ones(2, 1), torch.tensor([0, 1]))
    mu, var, labels = torch.tensor([[-3.0], [1.2]]), torch.ones(2, 1), torch.tensor([0, 1])
    batched, sequential = copy.deepcopy(before), copy.deepcopy(before)
    assert update_in_order_(batched, mu, var, labels).tolist() == _one_at_a_time(
        sequential, mu, var, labels) == [0, 1]
    for name in MEMORY_BUFFERS:
        assert torch.equal(getattr(batched, name), getattr(sequential, name)), name


def test_in_order_batch_without_enough_empty_slots_evicts_as_the_loop_does() -> None:
    generator = torch.Generator().manual_seed(5)
    mu, var = torch.randn(12, 3, generator=generator), torch.rand(12, 3, generator=generator) + 0.5
    labels = torch.arange(12) % 5
    batched, sequential = GaussianMemory(6, 3, seed=0), GaussianMemory(6, 3, seed=0)
    assert update_in_order_(batched, mu, var, labels).tolist() == _one_at_a_time(
        sequential, mu, var, labels)
    for name in MEMORY_BUFFERS:
        assert torch.equal(getattr(batched, name), getattr(sequential, name)), name


def test_enrolling_a_batch_equals_enrolling_image_by_image(smoke_checkpoint: Path) -> None:
    dim = _recognizer(smoke_checkpoint).content_dim
    generator = torch.Generator().manual_seed(1)
    names = ["ann", "bob", "cy"]
    labels = [names[i] for i in torch.randint(3, (30,), generator=generator).tolist()]
    centre = {name: 2 * torch.randn(dim, generator=generator) for name in names}
    mu = torch.stack([centre[name] for name in labels]) + torch.randn(30, dim,
                                                                      generator=generator)
    var = torch.exp(0.3 * torch.randn(30, dim, generator=generator))
    batched, single = _recognizer(smoke_checkpoint), _recognizer(smoke_checkpoint)
    batched.enroll_encoded(labels[:5], mu[:5], var[:5])
    batched.enroll_encoded(labels[5:], mu[5:], var[5:])
    single.enroll_encoded(labels[:5], mu[:5], var[:5])  # the same label ids
    for i in range(5, 30):
        single.enroll_encoded(labels[i:i + 1], mu[i:i + 1], var[i:i + 1])
    assert batched.labels() == single.labels()
    for name in ("means", "variances", "labels", "counts", "valid"):
        assert torch.equal(getattr(batched.memory, name), getattr(single.memory, name)), name


def test_top_k_lists_distinct_labels() -> None:
    memory = GaussianMemory(16, 2, seed=0)
    # One batch looks up the empty memory, so label 0 gets three entries, the three
    # nearest to the query; label 1 is the runner-up label.
    mu = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [3.0, 0.0]])
    memory.update_(mu, torch.ones(4, 2), torch.tensor([0, 0, 0, 1]))
    found = nearest_labels(ExactSearch(), memory, torch.zeros(1, 2), torch.ones(1, 2), 2)
    assert found.labels.tolist() == [[0, 1]]
    assert found.slots[0, 0] == 0 and found.divergence[0, 0] == 0


def test_remove_forgets_a_label(smoke_checkpoint: Path) -> None:
    recognizer = _recognizer(smoke_checkpoint)
    dim = recognizer.content_dim
    recognizer.enroll_encoded(["a", "b"], torch.tensor([[0.0] * dim, [5.0] * dim]),
                              torch.ones(2, dim))
    assert recognizer.remove("a") == 1
    assert recognizer.labels() == {"b": 1}
    result = recognizer.recognize_encoded(torch.zeros(1, dim), torch.ones(1, dim))[0]
    assert result.nearest == "b"
    with pytest.raises(GalleryError, match="'a' is not in the gallery"):
        recognizer.remove("a")


# --- unknown threshold --------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=40), st.floats(0, 0.99))
def test_calibrated_threshold_keeps_false_accepts_under_target(
        scores: list[float], target: float) -> None:
    threshold = calibrate_threshold(np.array(scores), target)
    accepted = np.mean(np.array(scores) >= threshold)
    assert accepted <= target + 1e-12
    # The lowest such threshold: the next float down accepts too many.
    if threshold > min(scores):
        assert np.mean(np.array(scores) >= np.nextafter(threshold, -np.inf)) > target


def test_threshold_turns_far_queries_into_unknown(smoke_checkpoint: Path) -> None:
    recognizer = _recognizer(smoke_checkpoint)
    dim = recognizer.content_dim
    recognizer.enroll_encoded(["a", "b"], torch.tensor([[0.0] * dim, [3.0] * dim]),
                              torch.ones(2, dim))
    near, far = torch.full((1, dim), 0.05), torch.full((1, dim), -6.0)
    recognizer.threshold = 0.5
    results = recognizer.recognize_encoded(torch.cat([near, far]), torch.ones(2, dim), k=2)
    assert results[0].label == "a" and results[1].label is None
    assert results[1].nearest == "a" and [m.label for m in results[1].top_k] == ["a", "b"]
    between = torch.full((1, dim), 1.5)  # as near "b" as "a": the margin's doubt
    for score, doubtful in (("margin", between), ("mahalanobis", far)):
        scored = recognizer.recognize_encoded(torch.cat([near, doubtful]), torch.ones(2, dim),
                                              score=score, threshold=-math.inf)
        assert scored[0].score > scored[1].score


# --- images as users have them ------------------------------------------------------------
def test_polarity_is_detected_and_can_be_forced() -> None:
    strokes = np.zeros((105, 80), np.uint8)
    strokes[30:70, 38:44] = 255
    paper = Image.fromarray(255 - strokes)
    assert is_dark_on_light(paper) and not is_dark_on_light(Image.fromarray(strokes))
    settings_ = ImagePreprocessing("strokes", 28)
    auto = prepare_image(paper, settings_)
    assert np.array_equal(auto, prepare_image(strokes, settings_))
    assert np.array_equal(auto, prepare_image(paper, settings_, "invert"))
    assert auto[0, 0] == 0 and auto.max() > 200  # background 0, strokes bright
    as_is = prepare_image(paper, settings_, "as-is")
    assert as_is[0, 0] == 255
    # Non-square drawings are padded, not stretched: the stroke stays centred and thin.
    assert auto.shape == (28, 28) and auto[:, :10].max() == 0


def test_user_image_formats_agree() -> None:
    settings_ = ImagePreprocessing("strokes", 28)
    grey = np.full((60, 60), 255, np.uint8)
    grey[10:50, 28:33] = 0
    reference = prepare_image(grey, settings_)
    rgba = np.zeros((60, 60, 4), np.uint8)  # black strokes on transparent "nothing"
    rgba[10:50, 28:33, 3] = 255
    assert np.array_equal(prepare_image(rgba, settings_), reference)
    assert np.array_equal(prepare_image(grey / 255.0, settings_), reference)
    assert np.array_equal(prepare_image(np.stack([grey] * 3, 2), settings_), reference)
    with pytest.raises(ImageError, match="float images"):
        prepare_image(grey * 2.0, settings_)


def test_unreadable_file_enrolls_nothing(smoke_checkpoint: Path, tmp_path: Path) -> None:
    files = drawing_files(tmp_path / "images")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    recognizer = _recognizer(smoke_checkpoint)
    recognizer.enroll("class0", files["class0"])
    before = (recognizer.labels(), recognizer.memory.means.clone())
    with pytest.raises(ImageError, match="broken.png: not a readable image"):
        recognizer.enroll_many(["class1", "class1", "class0"],
                               [files["class1"][0], broken, files["class0"][1]])
    with pytest.raises(ImageError, match="missing.png: no such image file"):
        recognizer.enroll("class2", [files["class2"][0], tmp_path / "missing.png"])
    assert recognizer.labels() == before[0]
    assert torch.equal(recognizer.memory.means, before[1])


def test_non_mavae_checkpoint_is_refused(smoke_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(smoke_checkpoint)
    checkpoint["config"]["method"] = "protonet"
    save_checkpoint(tmp_path / "protonet.ckpt", checkpoint)
    with pytest.raises(CheckpointError, match="'protonet' checkpoint; the recognizer needs"):
        Recognizer.from_checkpoint(tmp_path / "protonet.ckpt")


# --- galleries on disk --------------------------------------------------------------------
def test_gallery_round_trip_and_refusals(smoke_checkpoint: Path, tmp_path: Path) -> None:
    files = drawing_files(tmp_path / "images")
    recognizer = _recognizer(smoke_checkpoint)
    for label, paths in files.items():
        recognizer.enroll(label, paths[:1])
    recognizer.threshold = 0.25
    gallery = tmp_path / "gallery"
    recognizer.save(gallery)
    loaded = Recognizer.load(gallery)
    assert loaded.labels() == recognizer.labels() and loaded.threshold == 0.25
    queries = [paths[1] for paths in files.values()]
    assert ([r.to_dict() for r in loaded.recognize(queries)]
            == [r.to_dict() for r in recognizer.recognize(queries)])

    other = tmp_path / "other.ckpt"
    checkpoint = load_checkpoint(smoke_checkpoint)
    checkpoint["step"] += 1
    save_checkpoint(other, checkpoint)
    with pytest.raises(GalleryError, match="was enrolled with checkpoint SHA-256"):
        Recognizer.load(gallery, checkpoint=other)

    memory_file = gallery / MEMORY_NAME
    payload = bytearray(memory_file.read_bytes())
    payload[-3] ^= 0xFF
    memory_file.write_bytes(bytes(payload))
    with pytest.raises(GalleryError, match="does not match the SHA-256"):
        Recognizer.load(gallery)

    manifest = json.loads((gallery / MANIFEST_NAME).read_text())
    manifest["version"] = 99
    (gallery / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(GalleryError, match="gallery version 99 is not supported"):
        Recognizer.load(gallery)
    (gallery / MANIFEST_NAME).write_text("{")
    with pytest.raises(GalleryError, match="not a readable gallery manifest"):
        Recognizer.load(gallery)


def test_load_replays_the_journal_to_the_state_the_writes_left(smoke_checkpoint: Path,
                                                               tmp_path: Path) -> None:
    """Enroll, remove and calibrate logged after a snapshot: loading gives the memory
    those writes made, bit for bit; a record that cannot apply names the journal."""
    files = drawing_files(tmp_path / "images")
    live = Recognizer.from_checkpoint(smoke_checkpoint)
    live.enroll("class0", files["class0"])
    snapshot = live.save(tmp_path / "gallery")
    start_journal(tmp_path / "gallery", snapshot)
    writer = JournalWriter(tmp_path / "gallery", 0)
    for label in ("class1", "class2", "class0"):
        mu, var = live.encode(files[label])
        live.enroll_encoded([label] * len(mu), mu, var)
        writer.append(EnrollRecord((label,) * len(mu), mu, var))
    live.remove("class2")
    writer.append(RemoveRecord("class2"))
    calibration = Calibration(score="margin", threshold=0.5, target_far=0.05,
                              false_accept_rate=0.04, true_accept_rate=0.9,
                              correct_accept_rate=0.8, n_known=10, n_unknown=25)
    live.unknown_score, live.threshold, live.calibration = "margin", 0.5, calibration
    writer.append(CalibrateRecord("margin", 0.5, dataclasses.asdict(calibration)))
    loaded = Recognizer.load(tmp_path / "gallery")
    assert loaded.labels() == live.labels() == {"class0": 4, "class1": 2}
    assert (loaded.unknown_score, loaded.threshold, loaded.calibration) == (
        "margin", 0.5, calibration)
    for name in ("means", "variances", "labels", "counts", "ages", "valid"):
        assert torch.equal(getattr(loaded.memory, name), getattr(live.memory, name)), name
    writer.append(RemoveRecord("class2"))                 # already gone
    writer.close()
    with pytest.raises(GalleryError, match=r"journal.jsonl: record 6 cannot be replayed"):
        Recognizer.load(tmp_path / "gallery")


def test_failed_save_keeps_the_old_gallery(smoke_checkpoint: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    recognizer = _recognizer(smoke_checkpoint)
    dim = recognizer.content_dim
    recognizer.enroll_encoded(["a"], torch.zeros(1, dim), torch.ones(1, dim))
    gallery = tmp_path / "gallery"
    recognizer.save(gallery)
    recognizer.enroll_encoded(["b"], torch.ones(1, dim), torch.ones(1, dim))

    def disk_full(*_: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(GaussianMemory, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        recognizer.save(gallery)
    monkeypatch.undo()
    assert Recognizer.load(gallery).labels() == {"a": 1}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gallery"]


def test_save_refuses_a_directory_that_is_not_a_gallery(smoke_checkpoint: Path,
                                                        tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(GalleryError, match="non-empty directory without gallery.json"):
        _recognizer(smoke_checkpoint).save(tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


def _gaussmem(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gaussmem", *arguments], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_gallery_persists_across_processes(smoke_checkpoint: Path, tmp_path: Path) -> None:
    files = drawing_files(tmp_path / "images", n_classes=3, per_class=2)
    enroll_root = tmp_path / "enroll"
    for label, paths in files.items():
        (enroll_root / label).mkdir(parents=True)
        paths[0].rename(enroll_root / label / "0.png")
    gallery = tmp_path / "gallery"
    done = _gaussmem("enroll", "--gallery", str(gallery), "--checkpoint",
                     str(smoke_checkpoint), "--from-folder", str(enroll_root))
    assert done.returncode == 0, done.stderr
    assert "enrolled 3 image(s) of 3 label(s)" in done.stdout
    enrolled = [enroll_root / label / "0.png" for label in files]
    done = _gaussmem("recognize", "--gallery", str(gallery), "--json", *map(str, enrolled))
    assert done.returncode == 0, done.stderr
    assert [row["label"] for row in json.loads(done.stdout)] == list(files)
    done = _gaussmem("gallery", "remove", "--gallery", str(gallery), "class1")
    assert done.returncode == 0, done.stderr
    done = _gaussmem("gallery", "list", "--gallery", str(gallery), "--json")
    assert json.loads(done.stdout)["labels"] == {"class0": 1, "class2": 1}
    broken = tmp_path / "broken.png"
    broken.write_text("nope")
    done = _gaussmem("enroll", "--gallery", str(gallery), "--label", "class1",
                     str(files["class1"][1]), str(broken))
    assert done.returncode == 2 and "broken.png: not a readable image" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = _gaussmem("recognize", "--gallery", str(tmp_path / "nowhere"), str(broken))
    assert done.returncode == 2 and "is not a gallery" in done.stderr


# --- real data ----------------------------------------------------------------------------
def _train_real(config_name: str, steps: int, run: Path, data_dir: Path,
                cache_dir: Path, batch_episodes: int | None = None) -> Path:
    """A preset trained for `steps` steps (not minutes: a loaded machine must not make
    a weaker model), without validation."""
    config = preset(config_name)
    config.budget.max_steps, config.budget.max_minutes = steps, None
    if batch_episodes is not None:
        config.episodes.batch_episodes = batch_episodes
    config.data.val_subset = None
    threads = torch.get_num_threads()
    try:
        train_set = load_split(config.data, config.data.train_subset, data_dir=data_dir,
                               cache_dir=cache_dir)
        train(config, run, train_set, None, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run / "checkpoints" / "last.ckpt"


def omniglot_test_pngs(data_dir: Path, folder: Path, n_classes: int,
                       per_class: int) -> dict[str, list[Path]]:
    """Release PNGs (black strokes on white, 105x105) of unrotated test characters,
    spread over the test alphabets."""
    every = _vinyals_test_characters()
    characters = every[:: len(every) // n_classes][:n_classes]
    files: dict[str, list[Path]] = {}
    with zipfile.ZipFile(data_dir / "omniglot" / "images_evaluation.zip") as archive:
        members = sorted(name for name in archive.namelist() if name.endswith(".png"))
        for character in characters:
            alphabet, number = character.split("/")
            mine = [m for m in members if m.split("/")[1:3] == [alphabet, number]][:per_class]
            for index, member in enumerate(mine):
                path = folder / f"{alphabet}-{number}-{index}.png"
                path.write_bytes(archive.read(member))
                files.setdefault(character, []).append(path)
    return files


def _vinyals_test_characters() -> list[str]:
    from gaussmem.data.omniglot_splits import vinyals_classes

    classes, _ = vinyals_classes("test", None)
    return sorted({c.character for c in classes if c.rotation == 0})


@pytest.fixture(scope="module")
def omniglot_checkpoint(tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path,
                        real_cache_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("recognizer-omniglot") / "run"
    # cpu-quick with a quarter of its classes per step: ~30 s on an idle 2-core CPU.
    return _train_real("cpu-quick", 100, run, real_data_dir, real_cache_dir,
                       batch_episodes=4)


@pytest.mark.data
def test_omniglot_drawings_round_trip_and_unknowns(omniglot_checkpoint: Path,
                                                   real_data_dir: Path,
                                                   tmp_path: Path) -> None:
    files = omniglot_test_pngs(real_data_dir, tmp_path, n_classes=20, per_class=6)
    known = list(files)[:10]
    strangers = list(files)[10:]
    recognizer = Recognizer.from_checkpoint(omniglot_checkpoint)
    for label in known:
        recognizer.enroll(label, files[label][:1])
    enrolled = recognizer.recognize([files[label][0] for label in known])
    assert [result.label for result in enrolled] == known
    queries = [(label, path) for label in known for path in files[label][3:]]
    results = recognizer.recognize([path for _, path in queries])
    accuracy = np.mean([r.label == label for (label, _), r in zip(queries, results, strict=True)])
    assert accuracy >= 0.4  # 10-way 1-shot: chance is 0.1
    recognizer.polarity = "as-is"
    uninverted = recognizer.recognize([path for _, path in queries])
    recognizer.polarity = "auto"
    assert accuracy > np.mean([r.label == label for (label, _), r
                               in zip(queries, uninverted, strict=True)])

    # Calibrate on held-out drawings and half the strangers; reject the other strangers.
    calibration = recognizer.calibrate(
        [path for label in known for path in files[label][1:3]],
        [label for label in known for _ in range(2)],
        [path for label in strangers[:5] for path in files[label]], target_far=0.1)
    assert calibration.false_accept_rate <= 0.1
    held_out = recognizer.recognize([path for label in strangers[5:] for path in files[label]])
    rejected = np.mean([result.label is None for result in held_out])
    accepted_known = np.mean([result.label is not None for result in results])
    assert rejected >= 0.6 and accepted_known >= 0.3
    recognizer.save(tmp_path / "gallery")
    assert Recognizer.load(tmp_path / "gallery").threshold == calibration.threshold


@pytest.mark.data
def test_lfw_faces_round_trip(real_data_dir: Path, real_cache_dir: Path,
                              tmp_path: Path) -> None:
    if not (real_data_dir / "lfw").is_dir():
        pytest.skip("LFW-a not in the data directory")
    checkpoint = _train_real("lfw-cpu", 8, tmp_path / "run", real_data_dir, real_cache_dir,
                             batch_episodes=8)
    from gaussmem.data.lfw import paper_split

    people = paper_split("test")[:5]
    photos: dict[str, list[Path]] = {}
    with tarfile.open(real_data_dir / "lfw" / "lfwa.tar.gz", "r:gz") as archive:
        for member in archive:
            person = member.name.split("/")[1] if member.name.count("/") == 2 else None
            if member.isfile() and person in people and len(photos.get(person, [])) < 2:
                path = tmp_path / Path(member.name).name
                path.write_bytes(archive.extractfile(member).read())
                photos.setdefault(person, []).append(path)
    recognizer = Recognizer.from_checkpoint(checkpoint)
    assert recognizer.preprocessing == ImagePreprocessing("photo", 84)
    for person in people:
        recognizer.enroll(person, photos[person][:1])
    # The same photos as a user might have them: colour PNGs of another size.
    resaved = []
    for person in people:
        path = tmp_path / f"{person}.png"
        Image.open(photos[person][0]).convert("RGB").resize((300, 300)).save(path)
        resaved.append(path)
    results = recognizer.recognize(resaved)
    assert [result.label for result in results] == people
    assert all(result.similarity > result.top_k[1].similarity for result in results)


def test_importing_gaussmem_stays_light() -> None:
    code = ("import sys, gaussmem; assert 'torch' not in sys.modules; "
            "assert gaussmem.Recognizer.__name__ == 'Recognizer'")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_cli_choices_match_the_library() -> None:
    from gaussmem.commands import recognize as command
    from gaussmem.preprocess import POLARITIES
    from gaussmem.unknown import UNKNOWN_SCORES

    assert command._SCORES == UNKNOWN_SCORES and command._POLARITIES == POLARITIES
