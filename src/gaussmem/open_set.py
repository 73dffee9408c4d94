"""The few-shot open-set protocol: learn N known classes from K shots each, then tell
their queries from queries of N classes never shown.

Per episode the sampler draws `n_way + n_unknown` classes with `n_shot` shots and
`n_query` queries each (`episode_sampler`, so LFW-a's mirror-safe sampler and every
seed behave as in the closed-set protocol); the first `n_way` classes are known, and
only their shots are learnt. The unknown classes' shots are drawn and dropped, which
keeps the draw identical to a `(n_way + n_unknown)`-way episode. Over all queries:

* closed-set accuracy: the known queries labelled right among the `n_way` labels;
* AUROC: the probability that a known query's `known_scores_from_embeddings` beats an
  unknown query's (ties count one half; Mann-Whitney);
* FPR at 95% TPR: the fraction of unknown queries accepted at the highest threshold
  that accepts at least 95% of the known queries (scores equal to it are accepted).

Each is computed per episode and summarised as mean and 95% confidence interval over
episodes, in percent, like the closed-set accuracy (`AccuracySummary`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from gaussmem.accuracy import AccuracySummary
from gaussmem.data.datasets import FewShotDataset, episode_sampler
from gaussmem.data.episodes import EpisodeSampleIds
from gaussmem.embedding_cache import EmbeddingCache
from gaussmem.errors import EpisodeError
from gaussmem.methods.base import FewShotClassifier

#: Episodes of the open-set protocol when none are asked for (as in the few-shot
#: open-set literature, e.g. PEELER, Liu et al. 2020).
DEFAULT_OPEN_SET_EPISODES = 600
#: True-positive rate (known queries accepted) at which the false-positive rate is read.
TARGET_TPR = 0.95


@dataclass
class OpenSetResult:
    """One open-set evaluation: its shape and three summaries over episodes (percent)."""

    protocol: str
    n_way: int
    n_unknown: int
    n_shot: int
    n_query: int
    episodes: int
    seed: int
    accuracy: AccuracySummary
    auroc: AccuracySummary
    fpr_at_95_tpr: AccuracySummary
    seconds: float = 0.0
    encoded_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def auroc(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """Area under the ROC curve of known (positive) against unknown scores, in [0, 1]:
    P(known > unknown) + P(known == unknown) / 2 over all pairs."""
    known = np.asarray(known_scores, dtype=np.float64)[:, None]
    unknown = np.asarray(unknown_scores, dtype=np.float64)[None, :]
    if known.size == 0 or unknown.size == 0:
        raise ValueError("AUROC needs at least one known and one unknown score")
    return float((known > unknown).mean() + 0.5 * (known == unknown).mean())


def fpr_at_tpr(known_scores: np.ndarray, unknown_scores: np.ndarray,
               tpr: float = TARGET_TPR) -> float:
    """Fraction of `unknown_scores` at or above the highest threshold that keeps at
    least `tpr` of `known_scores` at or above it, in [0, 1]."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    known = np.sort(np.asarray(known_scores, dtype=np.float64))[::-1]
    unknown = np.asarray(unknown_scores, dtype=np.float64)
    if known.size == 0 or unknown.size == 0:
        raise ValueError("FPR needs at least one known and one unknown score")
    threshold = known[math.ceil(tpr * known.size) - 1]
    return float((unknown >= threshold).mean())


def open_set_sampler(dataset: FewShotDataset, n_way: int, n_unknown: int, n_shot: int,
                     n_query: int, seed: int):
    """The seeded sampler of `n_way + n_unknown`-class episodes (known classes first)."""
    if n_unknown < 1:
        raise EpisodeError(f"the open-set protocol needs n_unknown >= 1, got {n_unknown}")
    if n_query < 1:
        raise EpisodeError(f"the open-set protocol needs n_query >= 1, got {n_query}")
    return episode_sampler(dataset, n_way + n_unknown, n_shot, n_query, seed=seed)


def episode_open_set_metrics(classifier: FewShotClassifier, cache: EmbeddingCache,
                             ids: EpisodeSampleIds, n_way: int) -> tuple[float, float, float]:
    """(closed-set accuracy, AUROC, FPR at 95% TPR) of one episode, each in [0, 1].
    `ids` holds `n_way` known classes, then the unknown ones."""
    n_known_support = n_way * (len(ids.support_ids) // ids.n_way)
    support_ids = ids.support_ids[:n_known_support]
    embeddings = cache.lookup(np.concatenate([support_ids, ids.query_ids]))
    classifier.reset()
    classifier.add_support_embeddings(embeddings[:n_known_support],
                                      ids.support_labels()[:n_known_support])
    queries = embeddings[n_known_support:]
    labels = ids.query_labels()
    known = labels < n_way
    predicted = classifier.predict_scores_from_embeddings(queries[known]).argmax(dim=1)
    accuracy = (predicted == labels[known]).double().mean().item()
    scores = classifier.known_scores_from_embeddings(queries).double().numpy()
    known_mask = known.numpy()
    return (accuracy, auroc(scores[known_mask], scores[~known_mask]),
            fpr_at_tpr(scores[known_mask], scores[~known_mask]))


def evaluate_open_set(classifier: FewShotClassifier, dataset: FewShotDataset, *,
                      n_way: int, n_shot: int, n_query: int, n_unknown: int | None = None,
                      episodes: int = DEFAULT_OPEN_SET_EPISODES, seed: int = 0,
                      progress: Callable[[int, float], None] | None = None,
                      cache_embeddings: bool = True) -> OpenSetResult:
    """The open-set protocol over `episodes` seeded episodes; `n_unknown` defaults to
    `n_way`. `progress(episode_index, running_auroc)` is called after each episode."""
    n_unknown = n_way if n_unknown is None else n_unknown
    sampler = open_set_sampler(dataset, n_way, n_unknown, n_shot, n_query, seed)
    cache = EmbeddingCache(classifier, dataset, enabled=cache_embeddings)
    metrics = np.zeros((episodes, 3))
    was_training = classifier.training
    classifier.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for index in range(episodes):
            metrics[index] = episode_open_set_metrics(classifier, cache, sampler.sample_ids(),
                                                      n_way)
            if progress is not None:
                progress(index, float(metrics[: index + 1, 1].mean()))
    classifier.train(was_training)
    accuracy, area, false_positives = (AccuracySummary.from_values(metrics[:, column])
                                       for column in range(3))
    return OpenSetResult("open-set", n_way, n_unknown, n_shot, n_query, episodes, seed,
                         accuracy, area, false_positives,
                         seconds=time.perf_counter() - start,
                         encoded_images=cache.encoded_images)
