"""Evaluation protocols through the classifier interface; oracle checks and determinism."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import synthetic_set
from gaussmem.accuracy import AccuracySummary
from gaussmem.data.class_images import ClassImageSet
from gaussmem.data.datasets import episode_sampler
from gaussmem.embedding_cache import EmbeddingCache
from gaussmem.errors import EpisodeError
from gaussmem.evaluate import (
    _showing_index,
    evaluate_checkpoint,
    evaluate_online,
    evaluate_support_query,
)
from gaussmem.gaussian import symmetric_kl_diag
from gaussmem.methods import FewShotClassifier, available_methods, method_class
from gaussmem.methods.mavae import MemoryAugmentedVAE
from gaussmem.models import GaussianVAE, VAEConfig


class PixelLookup(FewShotClassifier):
    """Oracle: remembers exact images, so it is right whenever it has seen the drawing.
    Its embedding is the image's pixels, flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[bytes, int] = {}
        self.n_labels = 0
        self.embedded_rows: list[int] = []  # rows per `embed` call, for the cache tests

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self.embedded_rows.append(len(images))
        return images.flatten(1).clone()

    def reset(self) -> None:
        self.seen, self.n_labels = {}, 0

    def add_support_embeddings(self, support_embeddings: torch.Tensor,
                               support_labels: torch.Tensor) -> None:
        for row, label in zip(support_embeddings, support_labels.tolist(), strict=True):
            self.seen[row.numpy().tobytes()] = label
            self.n_labels = max(self.n_labels, label + 1)

    def predict_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        scores = torch.full((len(query_embeddings), max(1, self.n_labels)), -math.inf)
        for index, row in enumerate(query_embeddings):
            label = self.seen.get(row.numpy().tobytes())
            if label is not None:
                scores[index, label] = 0.0
        return scores

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> PixelLookup:
        return cls()


def class_per_image_set(n_classes: int = 8) -> ClassImageSet:
    """Every class's 20 drawings are one image: pixel lookup is a perfect classifier."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_classes, 1, 28, 28), dtype=np.uint8).repeat(20, axis=1)
    return ClassImageSet(images, [str(i) for i in range(n_classes)], "copies")


def test_confidence_interval_formula() -> None:
    summary = AccuracySummary.from_values(np.array([1.0, 0.0, 1.0, 1.0]))
    assert summary.mean == pytest.approx(75.0)
    assert summary.ci95 == pytest.approx(1.96 * np.std([100, 0, 100, 100], ddof=1) / 2)


def test_support_query_with_a_perfect_classifier() -> None:
    result = evaluate_support_query(PixelLookup(), class_per_image_set(), n_way=5, n_shot=1,
                                    n_query=3, episodes=4)
    assert result.accuracy.mean == 100.0 and result.accuracy.ci95 == 0.0


def test_online_protocol_counts_showings() -> None:
    labels = torch.tensor([2, 0, 2, 2, 1, 0])
    assert _showing_index(labels).tolist() == [0, 0, 1, 2, 0, 1]
    result = evaluate_online(PixelLookup(), class_per_image_set(), n_way=5, max_shot=3,
                             episodes=3)
    assert result.per_shot["0"].mean == 0.0  # a first showing is never known
    assert all(result.per_shot[str(k)].mean == 100.0 for k in (1, 2, 3))


def distinct_images_set(n_classes: int = 6) -> ClassImageSet:
    """Random pixels: every sample differs, so a row served for the wrong id shows."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n_classes, 20, 28, 28), dtype=np.uint8)
    return ClassImageSet(images, [str(i) for i in range(n_classes)], "distinct")


def test_embedding_cache_encodes_each_sample_once_and_serves_its_rows() -> None:
    dataset, classifier = distinct_images_set(), PixelLookup()
    cache = EmbeddingCache(classifier, dataset)
    first = np.array([5, 3, 5, 100])
    rows = cache.lookup(first)
    torch.testing.assert_close(rows, dataset.sample_tensor(first).flatten(1), rtol=0, atol=0)
    assert classifier.embedded_rows == [3]  # one batched call, the repeat encoded once
    rows = cache.lookup(np.array([100, 7, 3]))
    torch.testing.assert_close(rows, dataset.sample_tensor(np.array([100, 7, 3])).flatten(1),
                               rtol=0, atol=0)
    assert classifier.embedded_rows == [3, 1] and cache.encoded_images == 4
    cache.lookup(np.array([7, 5]))
    assert classifier.embedded_rows == [3, 1]
    with pytest.raises(IndexError, match="0..119"):
        cache.lookup(np.array([120]))
    uncached = EmbeddingCache(classifier, dataset, enabled=False)
    uncached.lookup(first)
    uncached.lookup(first)
    assert classifier.embedded_rows[-2:] == [4, 4] and uncached.encoded_images == 8


def tiny_classifiers() -> dict[str, FewShotClassifier]:
    """One small untrained classifier per registered method (BatchNorm included, so
    eval mode matters); Matching Nets with FCE, whose context must not be cached."""
    from gaussmem.config import MatchingConfig
    from gaussmem.methods.kaiser import KaiserEncoder, KaiserMemoryClassifier
    from gaussmem.methods.matching import MatchingNetwork, MatchingNetworkClassifier
    from gaussmem.methods.protonet import PrototypicalNetwork
    from gaussmem.models.encoders import Conv4Backbone

    torch.manual_seed(0)
    vae_config = VAEConfig(hidden_channels=8, content_dim=6, style_dim=2,
                           decoder_hidden_channels=8)
    matching = MatchingNetwork(MatchingConfig(hidden_channels=8, fce=True, fce_steps=2))
    with torch.no_grad():  # untrained context LSTMs drown the tiny conv features (every
        # query would get label 0, and the test could not tell rows apart): damp them.
        for parameter in [*matching.support_lstm.parameters(),
                          *matching.query_lstm.parameters()]:
            parameter.mul_(0.1)
    return {"mavae": MemoryAugmentedVAE(GaussianVAE(vae_config), embed_batch_size=16),
            "protonet": PrototypicalNetwork(Conv4Backbone(hidden_channels=8),
                                            embed_batch_size=16),
            "matching": MatchingNetworkClassifier(matching, cosine_scale=10.0,
                                                  embed_batch_size=16),
            "kaiser": KaiserMemoryClassifier(KaiserEncoder(8, width=8), 8,
                                             embed_batch_size=16)}


def test_tiny_classifiers_cover_every_method() -> None:
    assert set(tiny_classifiers()) == set(available_methods())


def _image_level_accuracies(classifier: FewShotClassifier, dataset: ClassImageSet, *,
                            n_way: int, n_shot: int, n_query: int, episodes: int,
                            seed: int) -> np.ndarray:
    """Reference: the same seeded episodes through `fit`/`predict` on pixels."""
    sampler = episode_sampler(dataset, n_way, n_shot, n_query, seed=seed)
    classifier.eval()
    accuracies = []
    with torch.no_grad():
        for episode in sampler.episodes(episodes):
            predictions = classifier.fit(episode.support_images,
                                         episode.support_labels).predict(episode.query_images)
            accuracies.append((predictions == episode.query_labels).double().mean().item())
    return np.array(accuracies)


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_cached_evaluation_matches_uncached_and_encodes_each_sample_once(name: str) -> None:
    classifier = tiny_classifiers()[name]
    dataset = synthetic_set(6)  # 120 samples; 12 episodes draw 180: many recur
    shape = {"n_way": 3, "n_shot": 2, "n_query": 3, "episodes": 12, "seed": 5}
    cached = evaluate_support_query(classifier, dataset, **shape)
    uncached = evaluate_support_query(classifier, dataset, cache_embeddings=False, **shape)
    reference = AccuracySummary.from_values(_image_level_accuracies(classifier, dataset,
                                                                    **shape))
    assert reference.mean > 100 / 3 + 10  # above chance: rows mixed up would show
    for result in (cached, uncached):
        assert result.accuracy.mean == pytest.approx(reference.mean, abs=1e-9)
        assert result.accuracy.ci95 == pytest.approx(reference.ci95, abs=1e-9)
    sampler = episode_sampler(dataset, 3, 2, 3, seed=5)
    drawn = [sampler.sample_ids() for _ in range(12)]
    distinct = np.unique(np.concatenate([np.concatenate([ids.support_ids, ids.query_ids])
                                         for ids in drawn]))
    assert cached.encoded_images == len(distinct) < dataset.n_samples
    assert uncached.encoded_images == 12 * 3 * (2 + 3)

    online = [evaluate_online(classifier, dataset, n_way=3, max_shot=3, episodes=6, seed=2,
                              cache_embeddings=flag) for flag in (True, False)]
    for shot in ("0", "1", "2", "3"):
        assert online[0].per_shot[shot].mean == pytest.approx(online[1].per_shot[shot].mean,
                                                              abs=1e-9)
    assert online[0].encoded_images < online[1].encoded_images == 6 * 3 * 4


def test_mavae_scores_match_brute_force_nearest_entry() -> None:
    torch.manual_seed(0)
    config = VAEConfig(hidden_channels=8, content_dim=6, style_dim=2,
                       decoder_hidden_channels=8, head_init_scale=1.0)
    classifier = MemoryAugmentedVAE(GaussianVAE(config), embed_batch_size=4).eval()
    support, support_labels = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    queries = torch.rand(7, 1, 28, 28)
    classifier.fit(support, support_labels)
    assert len(classifier.memory) == 3  # one entry per class, later shots merged
    scores = classifier.predict_scores(queries)
    memory = classifier.memory
    occupied = memory.valid.nonzero()[:, 0]
    content = classifier.content_posterior(classifier.embed(queries))
    brute = symmetric_kl_diag(content.mean[:, None], content.var[:, None],
                              memory.means[occupied][None], memory.variances[occupied][None])
    expected = torch.full((7, 3), -math.inf)
    for column, slot in enumerate(occupied.tolist()):
        label = int(memory.labels[slot])
        expected[:, label] = torch.maximum(expected[:, label], -brute[:, column])
    torch.testing.assert_close(scores, expected, atol=1e-3, rtol=1e-4)
    assert torch.equal(classifier.predict(queries), expected.argmax(1))


def test_mavae_memory_grows_for_large_way() -> None:
    config = VAEConfig(hidden_channels=8, content_dim=4, style_dim=2, decoder_hidden_channels=8)
    classifier = MemoryAugmentedVAE(GaussianVAE(config)).eval()
    classifier.fit(torch.rand(40, 1, 28, 28), torch.arange(40))
    assert len(classifier.memory) == 40
    assert classifier.predict_scores(torch.rand(3, 1, 28, 28)).shape == (3, 40)


def test_registry() -> None:
    assert "mavae" in available_methods()
    assert method_class("mavae") is MemoryAugmentedVAE
    from gaussmem.errors import UnknownMethodError

    with pytest.raises(UnknownMethodError, match="mavae"):
        method_class("protonet-typo")


def _smoke_checkpoint(tmp_path: Path, dataset: ClassImageSet) -> Path:
    from gaussmem.presets import preset
    from gaussmem.train import LAST_CHECKPOINT, train

    config = preset("smoke")
    config.budget.max_steps = 2
    train(config, tmp_path / "run", dataset, dataset, progress=False)
    return tmp_path / "run" / LAST_CHECKPOINT


def test_the_progress_bar_opens_only_once_an_episode_ran(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = class_per_image_set(10)
    checkpoint = _smoke_checkpoint(tmp_path, dataset)
    capsys.readouterr()
    with pytest.raises(EpisodeError, match="11-way episodes need 11 classes"):
        evaluate_checkpoint(checkpoint, n_way=11, n_shot=1, n_query=1, episodes=3,
                            dataset=dataset, progress=True)
    assert "episode" not in capsys.readouterr().err  # the error alone, no empty bar
    evaluate_checkpoint(checkpoint, n_way=4, n_shot=1, n_query=1, episodes=3,
                        dataset=dataset, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_two_evaluations_with_one_seed_are_identical(tmp_path: Path) -> None:
    dataset = class_per_image_set(10)
    checkpoint = _smoke_checkpoint(tmp_path, dataset)
    reports = []
    for _ in range(2):
        report = evaluate_checkpoint(checkpoint, n_way=4, n_shot=2, n_query=2, episodes=5,
                                     seed=3, dataset=dataset)
        report["result"].pop("seconds")
        reports.append(json.dumps(report, sort_keys=True))
    assert reports[0] == reports[1]
    assert json.loads(reports[0])["checkpoint"]["sha256"]
    online = evaluate_checkpoint(checkpoint, n_way=4, n_shot=2, episodes=3, seed=3,
                                 protocol="online", dataset=dataset)
    assert set(online["result"]["per_shot"]) == {"0", "1", "2"}


@pytest.mark.data
@pytest.mark.slow
def test_cli_train_then_evaluate_twice(real_data_dir: Path, real_cache_dir: Path,
                                       tmp_path: Path) -> None:
    """End to end through the real commands: same seed, identical JSON (but timings and
    the --json path in the recorded command)."""
    env_args = ["--data-dir", str(real_data_dir), "--cache-dir", str(real_cache_dir)]
    run = tmp_path / "run"
    command = [sys.executable, "-m", "gaussmem"]
    subprocess.run([*command, "train", "--preset", "smoke", "--max-steps", "2",
                    "--run-dir", str(run), "--no-progress", *env_args], check=True)
    outputs = []
    for index in range(2):
        out = tmp_path / f"eval{index}.json"
        subprocess.run([*command, "evaluate", "--checkpoint", str(run / "checkpoints" /
                        "last.ckpt"), "--n-way", "5", "--n-shot", "1", "--episodes", "3",
                        "--split", "val", "--json", str(out), "--no-progress", *env_args],
                       check=True)
        report = json.loads(out.read_text())
        report["result"].pop("seconds")
        # The command line names its own --json path, and the hardware record the
        # machine's load at that moment; everything else must match.
        assert str(out) in report.pop("command")
        assert report["hardware"].pop("load_average")
        outputs.append(report)
    assert outputs[0] == outputs[1]
    assert outputs[0]["split"] == "val" and outputs[0]["episodes"] == 3


@pytest.mark.data
def test_cli_trains_on_train_and_val_only_without_validation(
        real_data_dir: Path, real_cache_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A final fit on trainval must not validate on val (its classes are trained on):
    the CLI refuses the pair, and with data.val_subset=none keeps the last checkpoint."""
    from gaussmem.cli import main

    env_args = ["--data-dir", str(real_data_dir), "--cache-dir", str(real_cache_dir)]
    run = tmp_path / "run"
    train = ["train", "--preset", "smoke", "--max-steps", "2", "--run-dir", str(run),
             "--no-progress", "--set", "data.train_subset=trainval", *env_args]
    assert main(train) == 2
    error = capsys.readouterr().err
    assert "'trainval' holds 688 of the 688 classes of data.val_subset='val'" in error
    assert not run.exists(), "nothing is written for a refused run"
    assert main([*train, "--set", "data.val_subset=none"]) == 0
    printed = capsys.readouterr().out
    assert f"checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in printed
    assert "no validation" in printed
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert not (run / "checkpoints" / "best.ckpt").exists()
    assert all(json.loads(line)["kind"] != "val"
               for line in (run / "metrics.jsonl").read_text().splitlines())
    assert json.loads((run / "config.json").read_text())["data"]["val_subset"] is None
