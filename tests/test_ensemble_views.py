"""Test-time views (gaussmem.data.views), members scoring together
(gaussmem.methods.combined, `gaussmem evaluate --checkpoint A B --shift-pixels ...`) and
the diagnostic that compares them (experiments/ensemble_views.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gaussmem.data.class_images import ClassImageSet
from gaussmem.data.views import AffineView, view_maps
from gaussmem.embedding_cache import EmbeddingCache
from gaussmem.errors import EpisodeError
from gaussmem.evaluate import evaluate_checkpoint, evaluate_support_query
from gaussmem.methods.base import FewShotClassifier
from gaussmem.methods.combined import ScoreSum
from test_evaluate import _smoke_checkpoint, class_per_image_set
from test_result_scripts import load_script


class NearestMean(FewShotClassifier):
    """Pixels as the embedding; a label scores minus the squared distance to the mean of
    its support rows: imperfect on noisy drawings, so accuracies are not all 100."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[torch.Tensor] = []
        self.labels: list[int] = []

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).clone()

    def reset(self) -> None:
        self.rows, self.labels = [], []

    def add_support_embeddings(self, support_embeddings: torch.Tensor,
                               support_labels: torch.Tensor) -> None:
        self.rows += list(support_embeddings)
        self.labels += support_labels.tolist()

    def predict_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        labels = torch.tensor(self.labels)
        rows = torch.stack(self.rows)
        means = torch.stack([rows[labels == label].mean(0)
                             for label in range(int(labels.max()) + 1)])
        return -torch.cdist(query_embeddings, means) ** 2

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> NearestMean:
        return cls()


def noisy_set() -> ClassImageSet:
    """Random templates with heavy per-drawing noise: nearest-mean makes some errors."""
    rng = np.random.default_rng(0)
    templates = rng.random((10, 1, 28, 28)) < 0.15
    noise = rng.random((10, 20, 28, 28)) < 0.4
    images = ((templates ^ noise) * 255).astype(np.uint8)
    return ClassImageSet(images, [f"class{i}" for i in range(10)], "noisy")


def one_pixel_set() -> ClassImageSet:
    images = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    images[0, 0, 10, 5] = 255
    images[0, 0, 3, 20] = 255
    return ClassImageSet(images, ["dots"], "dots")


def test_shift_views_move_every_pixel_by_exactly_the_shift() -> None:
    dataset = one_pixel_set()
    maps = view_maps((28, 28), 2, 0.0)
    assert list(maps) == ["plain", "right2px", "left2px", "down2px", "up2px"]
    plain = dataset.sample_tensor(np.zeros(1, dtype=np.int64))[0, 0]
    moves = {"right2px": (0, 2), "left2px": (0, -2), "down2px": (2, 0), "up2px": (-2, 0)}
    for name, (rows, columns) in moves.items():
        seen = AffineView(dataset, name, maps[name])
        moved = seen.sample_tensor(np.zeros(1, dtype=np.int64))[0, 0]
        expected = torch.roll(plain, (rows, columns), dims=(0, 1))
        torch.testing.assert_close(moved, expected, atol=1e-5, rtol=0)
        assert seen.name == f"dots/{name}" and seen.n_samples == 1


def test_rotation_views_turn_the_image_both_ways() -> None:
    dataset = one_pixel_set()
    maps = view_maps((28, 28), 0, 90.0)
    assert list(maps) == ["plain", "rotate+90deg", "rotate-90deg"]
    plain = dataset.sample_tensor(np.zeros(1, dtype=np.int64))[0, 0]
    turned = [AffineView(dataset, name, maps[name]).sample_tensor(
        np.zeros(1, dtype=np.int64))[0, 0] for name in ("rotate+90deg", "rotate-90deg")]
    # A quarter turn about the centre maps pixel centres onto pixel centres: exact.
    candidates = [torch.rot90(plain, 1), torch.rot90(plain, -1)]
    assert any(torch.allclose(turned[0], c, atol=1e-5) for c in candidates)
    assert any(torch.allclose(turned[1], c, atol=1e-5) for c in candidates)
    assert not torch.allclose(turned[0], turned[1], atol=1e-5)


def test_view_sizes_are_checked() -> None:
    assert list(view_maps((28, 28))) == ["plain"]
    with pytest.raises(ValueError, match="shift_pixels=-1"):
        view_maps((28, 28), -1)
    with pytest.raises(ValueError, match="28x28"):
        view_maps((28, 28), 28)


def test_combinations_name_their_members() -> None:
    views = load_script("ensemble_views", "experiments")
    both = views.combinations(["a", "b"], ["plain", "right1px", "rotate+10deg"])
    assert both["plain/a"] == [("a", "plain")]
    assert both["views/a"] == [("a", "plain"), ("a", "right1px"), ("a", "rotate+10deg")]
    assert both["shifts/b"] == [("b", "plain"), ("b", "right1px")]
    assert both["rotations/b"] == [("b", "plain"), ("b", "rotate+10deg")]
    assert both["ensemble/plain"] == [("a", "plain"), ("b", "plain")]
    assert len(both["ensemble/views"]) == 6
    assert both["ensemble/rotations"] == [("a", "plain"), ("a", "rotate+10deg"),
                                          ("b", "plain"), ("b", "rotate+10deg")]
    assert both["single_view/b/rotate+10deg"] == [("b", "rotate+10deg")]
    shifts_only = views.combinations(["a"], ["plain", "right1px", "left1px"])
    assert set(shifts_only) == {"plain/a", "views/a", "single_view/a/right1px",
                                "single_view/a/left1px"}
    assert set(views.combinations(["a"], ["plain"])) == {"plain/a"}


def test_plain_matches_the_evaluation_and_a_copy_adds_nothing() -> None:
    views = load_script("ensemble_views", "experiments")
    dataset = noisy_set()
    shape = {"n_way": 5, "n_shot": 1, "episodes": 40, "seed": 2}
    classifier = NearestMean()
    members = {(run, "plain"): (classifier, EmbeddingCache(classifier, dataset))
               for run in ("a", "copy")}
    combos = views.combinations(["a", "copy"], ["plain"])
    report = views.score_cell(members, dataset, combos, **shape)
    evaluation = evaluate_support_query(NearestMean(), dataset, n_query=15, **shape)
    assert 20 < evaluation.accuracy.mean < 100
    assert report["plain/a"]["accuracy"]["mean"] == pytest.approx(
        evaluation.accuracy.mean, abs=1e-9)
    # Two identical members rank every label as one does: no gain, exactly.
    assert report["ensemble/plain"]["accuracy"] == report["plain/a"]["accuracy"]
    assert report["ensemble/plain"]["gain_over_plain"]["mean"] == 0.0
    assert "gain_over_plain" not in report["plain/a"]


def test_run_names_and_bad_input() -> None:
    views = load_script("ensemble_views", "experiments")
    assert views.run_name(Path("runs/x/checkpoints/last.ckpt")) == "x"
    assert views.run_name(Path("runs/x/checkpoints/best.ckpt")) == "x-best"
    assert views.parse_cell("20w5s", 1000) == (20, 5, 1000)
    assert views.parse_cell("5w5s:10000", 1000) == (5, 5, 10000)
    for bad in ("5way", "5w5s:many"):
        with pytest.raises(SystemExit, match=f"'{bad}'"):
            views.parse_cell(bad, 1000)


def test_score_sum_scores_what_the_diagnostic_scores() -> None:
    """A `ScoreSum` of one classifier over three views, through the evaluation harness,
    equals the diagnostic's `views/<run>` on the same episodes; each member keeps its own
    state, so one object cannot serve two members."""
    views = load_script("ensemble_views", "experiments")
    dataset = noisy_set()
    maps = view_maps((28, 28), 1, 10.0)
    chosen = ["plain", "right1px", "rotate+10deg"]
    shape = {"n_way": 5, "n_shot": 2, "episodes": 30, "seed": 4}
    members = {}
    for view in chosen:
        classifier = NearestMean()
        seen = dataset if view == "plain" else AffineView(dataset, view, maps[view])
        members[("a", view)] = (classifier, EmbeddingCache(classifier, seen))
    combos = views.combinations(["a"], chosen)
    report = views.score_cell(members, dataset, combos, **shape)
    combined = ScoreSum([(NearestMean(), None if view == "plain" else maps[view])
                         for view in chosen])
    evaluation = evaluate_support_query(combined, dataset, n_query=15, **shape)
    assert evaluation.accuracy.mean == pytest.approx(
        report["views/a"]["accuracy"]["mean"], abs=1e-9)
    assert report["views/a"]["accuracy"]["mean"] != report["plain/a"]["accuracy"]["mean"]
    shared = NearestMean()
    with pytest.raises(ValueError, match="of its own"):
        ScoreSum([(shared, None), (shared, maps["right1px"])])


def test_evaluate_several_checkpoints_and_views(tmp_path: Path) -> None:
    """A checkpoint scored together with itself answers as it does alone; views change
    the classifier and the report names every member; other protocols and bad sizes are
    refused with the reason."""
    dataset = class_per_image_set(10)
    checkpoint = _smoke_checkpoint(tmp_path, dataset)
    shape = {"n_way": 4, "n_shot": 2, "n_query": 2, "episodes": 6, "seed": 1,
             "dataset": dataset}
    alone = evaluate_checkpoint(checkpoint, **shape)
    twice = evaluate_checkpoint([checkpoint, checkpoint], **shape)
    assert twice["result"]["accuracy"] == alone["result"]["accuracy"]
    assert "combination" not in alone
    assert [member["sha256"] for member in twice["combination"]["checkpoints"]] == (
        [alone["checkpoint"]["sha256"]] * 2)
    viewed = evaluate_checkpoint(checkpoint, shift_pixels=1, rotation_degrees=15, **shape)
    assert viewed["combination"]["views"] == [
        "plain", "right1px", "left1px", "down1px", "up1px", "rotate+15deg", "rotate-15deg"]
    # One image per class: every view of it is still nearest to its own class.
    assert viewed["result"]["accuracy"] == alone["result"]["accuracy"]
    assert alone["result"]["accuracy"]["mean"] == 100.0
    with pytest.raises(EpisodeError, match="support-query episodes only"):
        evaluate_checkpoint(checkpoint, protocol="online", shift_pixels=1,
                            **{**shape, "n_query": None})
    with pytest.raises(EpisodeError, match="test-time views"):
        evaluate_checkpoint(checkpoint, shift_pixels=-2, **shape)


def test_table_puts_validation_first_and_the_readme_shows_only_test() -> None:
    table = load_script("make_ensemble_views_table")
    readme = load_script("update_readme")

    def report(split: str, plain: float, viewed: float) -> dict:
        def summary(mean: float) -> dict:
            return {"mean": mean, "ci95": 0.02, "episodes": 10000}
        return {"command": f"python experiments/ensemble_views.py --split {split}",
                "split": split, "dataset": f"omniglot/vinyals/{split}", "seed": 0,
                "checkpoints": {"run-a": {}}, "views": {"plain": [], "rotate+30deg": [],
                                                        "rotate-30deg": []},
                "hardware": {"cpu": "Intel Xeon", "cpu_cores": 2},
                "cells": {"5w5s": {
                    "plain/run-a": {"accuracy": summary(plain)},
                    "views/run-a": {"accuracy": summary(viewed),
                                    "gain_over_plain": summary(viewed - plain)},
                    "single_view/run-a/rotate+30deg": {
                        "accuracy": summary(plain - 0.1), "gain_over_plain": summary(-0.1)},
                }}}

    markdown = table.render({"b-test.json": report("test", 99.5, 99.6),
                             "a-val.json": report("val", 99.7, 99.75)})
    assert markdown.index("### val: run-a") < markdown.index("### test: run-a")
    assert "| 5w5s | views/run-a | 10000 | 99.60 ± 0.02 | +0.100 ± 0.020 |" in markdown
    assert "| 5w5s | plain/run-a | 10000 | 99.50 ± 0.02 | - |" in markdown
    assert "single_view" not in markdown
    assert "5w5s, each view alone (gain over plain): rotate+30deg -0.100." in markdown
    summary = markdown[markdown.index("## Summary: test split"):markdown.index("### val")]
    assert "| Kaiser et al. 2017 memory | paper | 98.4 | 99.6 | 95.0 | 98.6 |" in summary
    assert "| `run-a` | each checkpoint alone | - | 99.50 ± 0.02 | - | - |" in summary
    assert "|  | each with rotate+30deg, rotate-30deg | - | 99.60 ± 0.02 | - | - |" in summary
    assert "99.75" not in summary, "validation stays out of the test summary"
    assert "Table 2's cells" not in summary, "no call scored Table 2's cells"
    assert "| 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot |" in summary
    shown = readme.render_ensemble_views(markdown)
    assert shown.startswith("A range is") and "| `run-a` | each checkpoint alone" in shown
    assert "### " not in shown and "val" not in shown
    assert readme.render_ensemble_views("# nothing\n") == "Not yet run on the test split."
    large = report("test", 90.0, 90.5)
    large["cells"] = {"400w5s": large["cells"]["5w5s"]}
    both = table.render({"b-test.json": report("test", 99.5, 99.6), "c-test.json": large})
    table2 = both[both.index("Table 2's cells"):both.index("### test")]
    assert "| Tseran & Harada | paper | 82.2 | 92.8 | 71.4 | 87.1 |" in table2
    assert "| `run-a` | each checkpoint alone | - | - | - | 90.00 ± 0.02 |" in table2
    assert table2.count("each checkpoint alone") == 1, "the Table 1 call stays out of it"
