"""experiments/episode_errors.py: confusions sorted by kind, on a set where the only
possible errors are between two rotations of a symmetric character."""

from __future__ import annotations

import numpy as np
import pytest

from gaussmem.data.class_images import ClassImageSet
from gaussmem.evaluate import evaluate_support_query
from test_evaluate import PixelLookup
from test_result_scripts import load_script


def bar_image() -> np.ndarray:
    """A horizontal bar: the same under a half turn, a vertical bar under a quarter."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[13:15, 4:24] = 255
    return image


def rotation_classes() -> ClassImageSet:
    """Omniglot-style names, every drawing of a class the same image (so a pixel lookup
    is right unless two classes of an episode hold the same image): `Latin/character01`
    is a bar (rot000 = rot180, rot090 = rot270); `Latin/character02` and
    `Greek/character01` are random, different under every rotation."""
    rng = np.random.default_rng(0)
    characters = {"Latin/character01": bar_image(),
                  "Latin/character02": ((rng.random((28, 28)) < 0.2) * 255).astype(np.uint8),
                  "Greek/character01": ((rng.random((28, 28)) < 0.2) * 255).astype(np.uint8)}
    names, images = [], []
    for character, image in characters.items():
        for quarter_turns in range(4):
            names.append(f"{character}/rot{90 * quarter_turns:03d}")
            images.append(np.rot90(image, quarter_turns))
    stacked = np.stack(images)[:, None].repeat(20, axis=1)
    return ClassImageSet(np.ascontiguousarray(stacked), names, "synthetic-rotations")


def test_names_and_kinds() -> None:
    errors = load_script("episode_errors", "experiments")
    assert errors.character_and_rotation("Latin/character01/rot090") == (
        "Latin/character01", "rot090")
    assert errors.confusion_kind("A/character01/rot000", "A/character01/rot180") == (
        "other_rotation")
    assert errors.confusion_kind("A/character01/rot000", "A/character02/rot000") == (
        "same_alphabet")
    assert errors.confusion_kind("A/character01/rot000", "B/character01/rot000") == (
        "other_alphabet")
    with pytest.raises(SystemExit, match="'Aaron_Eckhart'"):
        errors.character_and_rotation("Aaron_Eckhart")
    assert errors.parse_cell("20w5s") == (20, 5)
    with pytest.raises(SystemExit, match="'20way'"):
        errors.parse_cell("20way")
    siblings = errors.rotation_siblings(rotation_classes().class_names)
    assert siblings[0] == {1, 2, 3} and siblings[5] == {4, 6, 7}


def test_self_overlap_is_one_for_a_symmetric_rotation_and_low_otherwise() -> None:
    errors = load_script("episode_errors", "experiments")
    dataset = rotation_classes()
    assert errors.rotation_self_overlap(dataset, 0, 2) == pytest.approx(1.0)
    assert errors.rotation_self_overlap(dataset, 0, 1) < 0.2
    assert errors.rotation_self_overlap(dataset, 4, 6) < 0.5


def test_report_counts_only_rotation_confusions_and_matches_the_evaluation() -> None:
    errors = load_script("episode_errors", "experiments")
    dataset = rotation_classes()
    shape = {"n_way": 4, "n_shot": 1, "episodes": 60, "seed": 3}
    report = errors.confusion_report(PixelLookup(), dataset, **shape)
    evaluation = evaluate_support_query(PixelLookup(), dataset, n_query=report["n_query"],
                                        **shape)
    assert report["accuracy"]["mean"] == pytest.approx(evaluation.accuracy.mean, abs=1e-9)
    by_kind = report["errors_by_kind"]
    assert by_kind["same_alphabet"] == by_kind["other_alphabet"] == 0
    assert by_kind["other_rotation"] == report["errors"] > 0
    assert report["queries"] == 60 * 4 * report["n_query"]
    assert report["errors"] == pytest.approx(
        report["queries"] * (1 - report["accuracy"]["mean"] / 100))
    assert report["accuracy_if_other_rotation_counted_right"] == pytest.approx(100.0)
    assert report["queries_without"]["accuracy"] == pytest.approx(100.0)
    assert report["queries_with_a_rotation_sibling_in_episode"]["accuracy"] < 100.0
    overlap = report["rotation_self_overlap"]
    assert overlap["rotation_pairs"] == 3 * 6
    assert overlap["median_confused_pairs"] == pytest.approx(1.0)
    assert overlap["median_all_rotation_pairs"] < 0.5
    confused = {tuple(pair["classes"]) for pair in report["most_confused_rotation_pairs"]}
    assert confused <= {("Latin/character01/rot000", "Latin/character01/rot180"),
                        ("Latin/character01/rot090", "Latin/character01/rot270")}
