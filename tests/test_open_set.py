"""The few-shot open-set protocol: metrics against brute-force oracles, each method's
unknown score against its definition, shared episodes, and the command line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import synthetic_set
from gaussmem.data.datasets import episode_sampler
from gaussmem.embedding_cache import EmbeddingCache
from gaussmem.errors import EpisodeError
from gaussmem.evaluate import evaluate_checkpoint
from gaussmem.gaussian import symmetric_kl_diag
from gaussmem.open_set import (
    auroc,
    episode_open_set_metrics,
    evaluate_open_set,
    fpr_at_tpr,
    open_set_sampler,
)
from test_evaluate import PixelLookup, _smoke_checkpoint, class_per_image_set, tiny_classifiers

scores = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=30)


def roc_points(known: list[float], unknown: list[float]) -> list[tuple[float, float]]:
    """(FPR, TPR) at every threshold 'accept scores >= t', from accept-all to none."""
    thresholds = [*sorted(set(known) | set(unknown)), np.inf]
    return [(np.mean(np.array(unknown) >= t), np.mean(np.array(known) >= t))
            for t in thresholds]


@settings(max_examples=60, deadline=None)
@given(scores, scores)
def test_auroc_is_the_trapezoid_area_under_the_roc_curve(known: list[float],
                                                          unknown: list[float]) -> None:
    points = sorted(roc_points(known, unknown))
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(points))
    assert auroc(np.array(known), np.array(unknown)) == pytest.approx(area)


@settings(max_examples=60, deadline=None)
@given(scores, scores)
def test_fpr_at_95_tpr_is_the_best_threshold_keeping_95_percent(known: list[float],
                                                                 unknown: list[float]) -> None:
    feasible = [fpr for fpr, tpr in roc_points(known, unknown) if tpr >= 0.95]
    assert fpr_at_tpr(np.array(known), np.array(unknown)) == pytest.approx(min(feasible))


def test_metrics_on_hand_examples() -> None:
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([1.0, 2.0]), np.array([3.0])) == 0.0
    known = np.arange(100, dtype=float)  # 95% TPR keeps 5..99: threshold 5
    assert fpr_at_tpr(known, np.array([4.0, 5.0, 6.0, -1.0])) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        auroc(np.array([1.0]), np.array([]))


@pytest.mark.parametrize("name", sorted(tiny_classifiers()))
def test_each_method_scores_unknowns_by_its_natural_similarity(name: str) -> None:
    classifier = tiny_classifiers()[name].eval()
    torch.manual_seed(1)
    support, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    queries = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        classifier.fit(support, labels)
        known = classifier.known_scores_from_embeddings(classifier.embed(queries))
        support_rows, query_rows = classifier.embed(support), classifier.embed(queries)
        if name == "mavae":  # -min SKL to a support Gaussian
            s, q = (classifier.content_posterior(rows) for rows in (support_rows, query_rows))
            expected = -symmetric_kl_diag(q.mean[:, None], q.var[:, None], s.mean[None],
                                          s.var[None]).amin(1)
        elif name == "protonet":  # -min squared distance to a prototype
            expected = -(query_rows[:, None] - support_rows[None]).square().sum(-1).amin(1)
        elif name == "matching":  # max cosine after full context embeddings
            s, q = classifier.network.contextualize(support_rows, query_rows)
            expected = (F.normalize(q, dim=1) @ F.normalize(s, dim=1).T).amax(1)
        else:  # kaiser: max cosine to a memory key
            expected = (query_rows @ support_rows.T).amax(1)
    assert known.shape == (5,)
    torch.testing.assert_close(known, expected, atol=1e-3, rtol=1e-4)


def test_a_perfect_lookup_separates_known_from_unknown() -> None:
    result = evaluate_open_set(PixelLookup(), class_per_image_set(12), n_way=3, n_shot=1,
                               n_query=4, episodes=5, seed=2)
    assert (result.accuracy.mean, result.auroc.mean, result.fpr_at_95_tpr.mean) == (
        100.0, 100.0, 0.0)
    assert result.n_unknown == 3 and result.episodes == 5


def test_episodes_are_the_wider_closed_set_draw_with_unknown_shots_dropped() -> None:
    dataset = synthetic_set(10)
    open_sampler = open_set_sampler(dataset, 3, 2, 1, 4, seed=7)
    wide = episode_sampler(dataset, 5, 1, 4, seed=7)
    for _ in range(3):
        ids, reference = open_sampler.sample_ids(), wide.sample_ids()
        assert np.array_equal(ids.query_ids, reference.query_ids)
    classifier = PixelLookup()
    cache = EmbeddingCache(classifier, dataset)
    episode = open_set_sampler(dataset, 3, 2, 1, 4, seed=7).sample_ids()
    episode_open_set_metrics(classifier, cache, episode, n_way=3)
    assert sorted(classifier.seen.values()) == [0, 1, 2]  # only the known shots learnt


def test_method_results_do_not_depend_on_what_ran_before() -> None:
    dataset = synthetic_set(10)
    shape = {"n_way": 3, "n_shot": 1, "n_query": 3, "episodes": 4, "seed": 3}
    classifiers = tiny_classifiers()
    first = evaluate_open_set(classifiers["protonet"], dataset, **shape)
    evaluate_open_set(classifiers["kaiser"], dataset, **shape)
    again = evaluate_open_set(classifiers["protonet"], dataset, **shape)
    assert first.auroc == again.auroc and first.accuracy == again.accuracy


def test_protocol_needs_queries_and_unknown_classes() -> None:
    with pytest.raises(EpisodeError, match="n_unknown >= 1"):
        open_set_sampler(synthetic_set(6), 3, 0, 1, 2, seed=0)
    with pytest.raises(EpisodeError, match="6-way episodes need 6 classes"):
        evaluate_open_set(PixelLookup(), synthetic_set(5), n_way=3, n_shot=1, n_query=2,
                          episodes=1)


def test_checkpoint_report_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gaussmem.cli import main

    dataset = class_per_image_set(10)
    checkpoint = _smoke_checkpoint(tmp_path, dataset)
    report = evaluate_checkpoint(checkpoint, n_way=3, n_shot=1, n_query=2, episodes=3,
                                 protocol="open-set", dataset=dataset)
    assert report["n_unknown"] == 3 and report["protocol"] == "open-set"
    assert set(report["result"]) >= {"accuracy", "auroc", "fpr_at_95_tpr"}
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--open-set",
                 "--protocol", "online"]) == 2
    assert "two protocols" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--n-unknown", "2"]) == 2
    assert "open-set protocol only" in capsys.readouterr().err


@pytest.mark.data
def test_cli_open_set_on_real_omniglot(tmp_path: Path, real_data_dir: Path,
                                       real_cache_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from gaussmem.cli import main

    checkpoint = _smoke_checkpoint(tmp_path, class_per_image_set(10))
    out = tmp_path / "open.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--open-set", "--n-way", "5",
                 "--n-shot", "1", "--episodes", "3", "--json", str(out), "--no-progress",
                 "--threads", "1", "--data-dir", str(real_data_dir),
                 "--cache-dir", str(real_cache_dir)]) == 0
    report = json.loads(out.read_text())
    assert (report["n_unknown"], report["n_query"], report["episodes"]) == (5, 15, 3)
    assert "AUROC" in capsys.readouterr().out
    # The command reports what the library computes on the same test episodes.
    library = evaluate_checkpoint(checkpoint, n_way=5, n_shot=1, episodes=3,
                                  protocol="open-set", data_dir=real_data_dir,
                                  cache_dir=real_cache_dir)["result"]
    for metric in ("accuracy", "auroc", "fpr_at_95_tpr"):
        assert report["result"][metric] == pytest.approx(library[metric])
