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

from gaussmem.data.class_images import ClassImageSet
from gaussmem.evaluate import (
    AccuracySummary,
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
    """Oracle: remembers exact images, so it is right whenever it has seen the drawing."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[bytes, int] = {}
        self.n_labels = 0

    def reset(self) -> None:
        self.seen, self.n_labels = {}, 0

    def add_support(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        for image, label in zip(support_images, support_labels.tolist(), strict=True):
            self.seen[image.numpy().tobytes()] = label
            self.n_labels = max(self.n_labels, label + 1)

    def predict_scores(self, query_images: torch.Tensor) -> torch.Tensor:
        scores = torch.full((len(query_images), max(1, self.n_labels)), -math.inf)
        for row, image in enumerate(query_images):
            label = self.seen.get(image.numpy().tobytes())
            if label is not None:
                scores[row, label] = 0.0
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
    content = classifier.embed(queries)
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
    from gaussmem.methods.registry import UnknownMethodError

    with pytest.raises(UnknownMethodError, match="mavae"):
        method_class("protonet-typo")


def _smoke_checkpoint(tmp_path: Path, dataset: ClassImageSet) -> Path:
    from gaussmem.config import preset
    from gaussmem.train import LAST_CHECKPOINT, train

    config = preset("smoke")
    config.budget.max_steps = 2
    train(config, tmp_path / "run", dataset, dataset, progress=False)
    return tmp_path / "run" / LAST_CHECKPOINT


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
        # The command line names its own --json path; everything else must match.
        assert str(out) in report.pop("command")
        outputs.append(report)
    assert outputs[0] == outputs[1]
    assert outputs[0]["split"] == "val" and outputs[0]["episodes"] == 3
