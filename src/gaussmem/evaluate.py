"""Evaluation protocols, spoken only through the `FewShotClassifier` interface.

* support-query: per episode, `fit` the support set, `predict` the queries; accuracy is
  the fraction of queries labelled right; we report the mean over episodes and a 95%
  confidence interval `1.96 * std / sqrt(episodes)` (sample std), as Snell et al. do.
* online (Kaiser et al. 2017): per episode a stream shows each of `n_way` classes
  `max_shot + 1` times in random order; the classifier predicts each item, then learns
  it. k-shot accuracy = accuracy on the items that are the (k+1)-th showing of their
  class (0-shot is the first showing, necessarily a guess).

Episodes come from `episode_sampler(dataset, ..., seed=seed)` (gaussmem.data.datasets:
plain for Omniglot, mirror-safe for LFW-a), so a seed fixes the episodes whatever was
evaluated before, and two runs give identical numbers.

Episodes are drawn as sample ids, and each sample is encoded once per evaluation through
an `EmbeddingCache` (the encoder dominates the cost and the same images recur across
episodes); the episode logic runs on the cached rows through the classifier's
embedding-level calls. `cache_embeddings=False` encodes every episode afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gaussmem.accuracy import AccuracySummary
from gaussmem.checkpoint import file_sha256, load_checkpoint
from gaussmem.data.datasets import (
    FewShotDataset,
    default_n_query,
    episode_sampler,
    load_split,
)
from gaussmem.data.episodes import EpisodeSampleIds
from gaussmem.data.grouped_images import GroupedImageSet
from gaussmem.data.views import PLAIN, view_maps
from gaussmem.embedding_cache import EmbeddingCache
from gaussmem.errors import DeviceError, EpisodeError
from gaussmem.methods import classifier_from_checkpoint
from gaussmem.methods.base import FewShotClassifier
from gaussmem.methods.combined import ScoreSum
from gaussmem.open_set import evaluate_open_set
from gaussmem.plumbing.device import resolve_device

#: Queries per class in support-query episodes (Vinyals/Snell use 15 on Omniglot).
DEFAULT_N_QUERY = 15


@dataclass
class EvaluationResult:
    """Everything a results table needs from one evaluation."""

    protocol: str
    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    seed: int
    accuracy: AccuracySummary
    per_shot: dict[str, AccuracySummary] = field(default_factory=dict)
    seconds: float = 0.0
    #: Images run through the encoder (with the cache: distinct samples drawn).
    encoded_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_eval_mode(classifier: FewShotClassifier) -> bool:
    was_training = classifier.training
    classifier.eval()
    return was_training


def evaluate_support_query(classifier: FewShotClassifier, dataset: FewShotDataset, *,
                           n_way: int, n_shot: int, n_query: int = DEFAULT_N_QUERY,
                           episodes: int = 1000, seed: int = 0,
                           progress: Callable[[int, float], None] | None = None,
                           cache_embeddings: bool = True) -> EvaluationResult:
    """Mean support-query accuracy over `episodes` seeded episodes.

    `progress(episode_index, running_accuracy)` is called after each episode if given.
    `cache_embeddings=False` re-encodes every episode's images (same accuracies, slower).
    """
    sampler = episode_sampler(dataset, n_way, n_shot, n_query, seed=seed)
    cache = EmbeddingCache(classifier, dataset, enabled=cache_embeddings)
    accuracies = np.zeros(episodes)
    was_training = _set_eval_mode(classifier)
    start = time.perf_counter()
    with torch.no_grad():
        for index in range(episodes):
            accuracies[index] = _episode_accuracy(classifier, cache, sampler.sample_ids())
            if progress is not None:
                progress(index, float(accuracies[: index + 1].mean()))
    classifier.train(was_training)
    return EvaluationResult("support-query", n_way, n_shot, n_query, episodes, seed,
                            AccuracySummary.from_values(accuracies),
                            seconds=time.perf_counter() - start,
                            encoded_images=cache.encoded_images)


def episode_scores(classifier: FewShotClassifier, cache: EmbeddingCache,
                   ids: EpisodeSampleIds) -> torch.Tensor:
    """One support-query episode's scores, `(n_queries, n_way)` (`fit`, then
    `predict_scores`, on embeddings); support and queries are looked up together: one
    encoder pass. Diagnostics that need more than the accuracy call this (or
    `episode_predictions`) too, so they score exactly what the evaluation scores."""
    n_support = len(ids.support_ids)
    embeddings = cache.lookup(np.concatenate([ids.support_ids, ids.query_ids]))
    classifier.reset()
    classifier.add_support_embeddings(embeddings[:n_support], ids.support_labels())
    return classifier.predict_scores_from_embeddings(embeddings[n_support:])


def episode_predictions(classifier: FewShotClassifier, cache: EmbeddingCache,
                        ids: EpisodeSampleIds) -> torch.Tensor:
    """One support-query episode's predicted labels, `(n_queries,)`: the argmax of
    `episode_scores`."""
    return episode_scores(classifier, cache, ids).argmax(dim=1)


def _episode_accuracy(classifier: FewShotClassifier, cache: EmbeddingCache,
                      ids: EpisodeSampleIds) -> float:
    """Fraction of one episode's queries labelled right."""
    predicted = episode_predictions(classifier, cache, ids)
    return (predicted == ids.query_labels()).double().mean().item()


def evaluate_online(classifier: FewShotClassifier, dataset: FewShotDataset, *, n_way: int,
                    max_shot: int = 5, episodes: int = 1000, seed: int = 0,
                    cache_embeddings: bool = True) -> EvaluationResult:
    """Kaiser's online protocol; `accuracy` is the `max_shot`-shot accuracy and
    `per_shot["k"]` the k-shot accuracy for k = 0..max_shot. `cache_embeddings=False`
    re-encodes every stream's images (same accuracies, slower)."""
    if isinstance(dataset, GroupedImageSet) and dataset.mirror:
        # A stream showing a class several times would show a photo and its mirror as
        # two showings, the second answered by near-copying the first.
        raise EpisodeError(f"the online protocol is not available on {dataset.name}: its "
                           "mirrored samples would appear as separate showings of a class")
    sampler = episode_sampler(dataset, n_way, max_shot + 1, 0, seed=seed)
    cache = EmbeddingCache(classifier, dataset, enabled=cache_embeddings)
    # The stream order has its own generator, derived from the seed, so the episodes'
    # content matches the support-query sampler with the same seed and shape.
    order_rng = np.random.Generator(np.random.PCG64([seed, 1]))
    per_shot = np.zeros((episodes, max_shot + 1))
    was_training = _set_eval_mode(classifier)
    start = time.perf_counter()
    with torch.no_grad():
        for index in range(episodes):
            ids = sampler.sample_ids()
            order = order_rng.permutation(len(ids.support_ids))
            labels = ids.support_labels()[torch.from_numpy(order)]
            embeddings = cache.lookup(ids.support_ids[order])
            predictions = classifier.online_predictions_from_embeddings(embeddings, labels)
            correct = (predictions == labels).double()
            showing = _showing_index(labels)
            for shot in range(max_shot + 1):
                per_shot[index, shot] = correct[showing == shot].mean().item()
    classifier.train(was_training)
    summaries = {str(shot): AccuracySummary.from_values(per_shot[:, shot])
                 for shot in range(max_shot + 1)}
    return EvaluationResult("online", n_way, max_shot, 0, episodes, seed,
                            summaries[str(max_shot)], per_shot=summaries,
                            seconds=time.perf_counter() - start,
                            encoded_images=cache.encoded_images)


def _showing_index(labels: torch.Tensor) -> torch.Tensor:
    """For each stream item, how many earlier items had its label: `(n,)`."""
    seen: dict[int, int] = {}
    showing = torch.zeros(len(labels), dtype=torch.int64)
    for index, label in enumerate(labels.tolist()):
        showing[index] = seen.get(label, 0)
        seen[label] = showing[index].item() + 1
    return showing


def evaluate_checkpoint(checkpoint_path: Path | Sequence[Path], *, n_way: int, n_shot: int,
                        n_query: int | None = None, episodes: int = 1000, seed: int = 0,
                        split: str = "test", protocol: str = "support-query",
                        data_dir: Path | None = None, cache_dir: Path | None = None,
                        dataset: FewShotDataset | None = None, progress: bool = False,
                        device: str = "cpu", shift_pixels: int = 0,
                        rotation_degrees: float = 0.0,
                        n_unknown: int | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint; returns the JSON-ready report (everything to reproduce it).

    `dataset` replaces loading `split` of the checkpoint's dataset (tests, other data).
    `n_query=None` takes `default_n_query` (15 on Omniglot; what fits on LFW-a).
    `protocol="open-set"` (gaussmem.open_set) adds `n_unknown` unknown classes per
    episode (None: `n_way`); the report's `n_unknown` says how many.
    `device` (gaussmem.plumbing.device): where the encoder runs; "auto" takes a GPU only for
    methods that can embed there. Accuracies do not depend on it beyond float rounding.
    Beyond the paper (support-query only): several checkpoints score together, and
    `shift_pixels` / `rotation_degrees` add fixed test-time views of every image
    (`gaussmem.methods.combined`); the report's `combination` names the members, and
    `checkpoint` is then the first checkpoint.
    """
    paths = ([Path(checkpoint_path)] if isinstance(checkpoint_path, str | Path)
             else [Path(path) for path in checkpoint_path])
    if not paths:
        raise ValueError("evaluate_checkpoint needs at least one checkpoint")
    checkpoints = [load_checkpoint(path) for path in paths]
    config = checkpoints[0]["config"]
    for path, checkpoint in zip(paths[1:], checkpoints[1:], strict=True):
        if checkpoint["config"]["method"] != config["method"]:
            raise EpisodeError(f"{path} is a {checkpoint['config']['method']} checkpoint and "
                               f"{paths[0]} a {config['method']} one: scores add up only "
                               "within one method")
        if checkpoint["config"]["data"] != config["data"]:
            raise EpisodeError(f"{path} was trained on other data settings than {paths[0]}; "
                               "checkpoints that score together need one dataset")
    if dataset is None:
        dataset = load_split(config["data"], split, data_dir=data_dir, cache_dir=cache_dir)
    if n_query is None:
        n_query = default_n_query(dataset, n_shot) if protocol != "online" else 0
    if protocol != "online" and n_query < 1:
        # No query would score nothing and report an accuracy of nan%.
        raise EpisodeError(f"n_shot={n_shot} leaves no query image per class in "
                           f"{dataset.name} ({dataset.n_samples_per_class} samples per class)")
    image_shape = tuple(dataset.sample_tensor(np.zeros(1, dtype=np.int64)).shape[-2:])
    try:
        views = view_maps(image_shape, shift_pixels, rotation_degrees)
    except ValueError as error:
        raise EpisodeError(f"test-time views: {error}") from None
    combined = len(paths) > 1 or len(views) > 1
    if combined and protocol != "support-query":
        raise EpisodeError("several checkpoints or test-time views score support-query "
                           f"episodes only, not the {protocol} protocol")
    classifier = (combined_classifier(checkpoints, views) if combined
                  else classifier_from_checkpoint(checkpoints[0]))
    encoder_device = resolve_device(device)
    if device == "auto" and encoder_device.type not in classifier.encoder_device_types:
        encoder_device = torch.device("cpu")
    try:
        classifier.encoder_to_(encoder_device)
    except ValueError as error:
        raise DeviceError(f"device {device!r}: {error}") from None
    bar = _progress_bar(episodes, progress, "auroc" if protocol == "open-set" else "acc")
    if protocol == "support-query":
        result = evaluate_support_query(classifier, dataset, n_way=n_way, n_shot=n_shot,
                                        n_query=n_query, episodes=episodes, seed=seed,
                                        progress=bar)
    elif protocol == "online":
        result = evaluate_online(classifier, dataset, n_way=n_way, max_shot=n_shot,
                                 episodes=episodes, seed=seed)
    elif protocol == "open-set":
        n_unknown = n_way if n_unknown is None else n_unknown
        result = evaluate_open_set(classifier, dataset, n_way=n_way, n_shot=n_shot,
                                   n_query=n_query, n_unknown=n_unknown, episodes=episodes,
                                   seed=seed, progress=bar)
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    summaries = [_checkpoint_summary(path, checkpoint)
                 for path, checkpoint in zip(paths, checkpoints, strict=True)]
    report = {
        "result": result.to_dict(),
        "checkpoint": summaries[0],
        "device": str(encoder_device),
        "dataset": dataset.name, "split": split, "protocol": protocol, "seed": seed,
        "episodes": episodes, "n_way": n_way, "n_shot": n_shot, "n_query": n_query,
        "train_config": config,
    }
    if protocol == "open-set":
        report["n_unknown"] = n_unknown
    if combined:
        report["combination"] = {
            "checkpoints": summaries, "views": list(views), "shift_pixels": shift_pixels,
            "rotation_degrees": rotation_degrees}
    return report


def combined_classifier(checkpoints: Sequence[dict[str, Any]],
                        views: dict[str, torch.Tensor]) -> ScoreSum:
    """One member per checkpoint and view (`views` from `gaussmem.data.views.view_maps`),
    each a classifier of its own so that each keeps its own memory."""
    return ScoreSum([(classifier_from_checkpoint(checkpoint), None if name == PLAIN else theta)
                     for checkpoint in checkpoints for name, theta in views.items()])


def _checkpoint_summary(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    config = checkpoint["config"]
    return {"path": str(path), "sha256": file_sha256(path), "step": checkpoint["step"],
            "method": config["method"], "train_minutes": checkpoint["elapsed_seconds"] / 60.0}


def _progress_bar(episodes: int, enabled: bool, name: str = "acc"
                  ) -> Callable[[int, float], None] | None:
    if not enabled:
        return None
    bars: list[tqdm] = []

    def update(index: int, running_accuracy: float) -> None:
        # Opened at the first finished episode: a request the sampler refuses (too many
        # classes, say) then fails with its message alone, not under an empty bar.
        if not bars:
            bars.append(tqdm(total=episodes, unit="episode", dynamic_ncols=True))
        bar = bars[0]
        bar.update(1)
        bar.set_postfix({name: f"{100 * running_accuracy:.2f}"}, refresh=False)
        if index + 1 == episodes:
            bar.close()

    return update
