"""Unknown scores: how sure a recognizer is that a query shows someone in its gallery.

Every score is "higher = more likely known"; a query is accepted when its score is at
least the threshold. Three are offered (`experiments/unknown_scores.py` compares them on
validation classes, `results/open_set/unknown_scores.json`):

- "similarity": exp(-SKL) to the nearest label's nearest entry (the paper's eq. 1);
- "margin": SKL of the runner-up label minus SKL of the nearest (+inf with one label):
  a query between two labels is doubtful however close it is to both;
- "mahalanobis": the Gaussians' spread, which a point embedding does not have: minus the
  mean over dimensions of (query mean - entry mean)^2 / (entry variance + query
  variance), best over the candidate labels: the exponent of the expected likelihood
  N(query mean; entry mean, entry variance + query variance). An entry merged from many
  varied examples is wide and accepts farther queries; a sharp one only close ones. The
  likelihood's normaliser is left out: it depends on the widths alone, not on the match,
  and ranked sharp queries as known whatever they matched.

`calibrate_threshold` picks the threshold for a target false-accept rate from held-out
unknown queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gaussmem.gallery_search import LabelCandidates
from gaussmem.memory import NOT_FOUND, GaussianMemory

UNKNOWN_SCORES: tuple[str, ...] = ("similarity", "margin", "mahalanobis")


def unknown_score(name: str, memory: GaussianMemory, mu: torch.Tensor, var: torch.Tensor,
                  candidates: LabelCandidates) -> torch.Tensor:
    """Score `name` of each query, float64 `(n_queries,)`; -inf where the gallery is empty.

    Args: `mu`, `var` `(n_queries, dim)`; `candidates` from `nearest_labels` (k >= 2
    for "margin" to see a runner-up).
    """
    found = candidates.labels[:, 0] != NOT_FOUND
    divergence = candidates.divergence.double()
    if name == "similarity":
        scores = torch.exp(-divergence[:, 0])
    elif name == "margin":
        runner_up = divergence[:, 1] if divergence.shape[1] > 1 else torch.full_like(
            divergence[:, 0], torch.inf)
        scores = runner_up - divergence[:, 0]
    elif name == "mahalanobis":
        scores = _mahalanobis(memory, mu, var, candidates)
    else:
        raise ValueError(f"unknown score {name!r}; choose from {UNKNOWN_SCORES}")
    return torch.where(found, scores, -torch.inf)


def _mahalanobis(memory: GaussianMemory, mu: torch.Tensor, var: torch.Tensor,
                 candidates: LabelCandidates) -> torch.Tensor:
    """-mean_d (mu_q - mu_e)^2 / (var_e + var_q), max over the candidate entries."""
    entry_mu, entry_var = memory.entries(candidates.slots)
    spread = entry_var.double() + var.double()[:, None, :]
    squared = (mu.double()[:, None, :] - entry_mu.double()) ** 2
    per_candidate = -(squared / spread).mean(dim=2)
    per_candidate = per_candidate.masked_fill(candidates.slots == NOT_FOUND, -torch.inf)
    return per_candidate.max(dim=1).values


@dataclass(frozen=True)
class Calibration:
    """A threshold and what it did on the held-out examples it was chosen on."""

    score: str
    threshold: float
    target_far: float
    #: Fraction of unknown examples accepted at `threshold` (<= target_far).
    false_accept_rate: float
    #: Fraction of known examples accepted at `threshold`.
    true_accept_rate: float
    #: Fraction of known examples accepted with their right label.
    correct_accept_rate: float
    n_known: int
    n_unknown: int


def calibrate_threshold(unknown_scores: np.ndarray, target_far: float) -> float:
    """The lowest threshold that accepts at most `target_far` of `unknown_scores`
    (accept: score >= threshold): just above the (m+1)-th highest unknown score,
    m = floor(target_far * n), so ties never push the rate over the target."""
    if not 0 <= target_far < 1:
        raise ValueError(f"target false-accept rate must be in [0, 1), got {target_far}")
    scores = np.sort(np.asarray(unknown_scores, dtype=np.float64))[::-1]
    if len(scores) == 0:
        raise ValueError("calibration needs at least one unknown example")
    allowed = math.floor(target_far * len(scores) + 1e-9)
    if allowed >= len(scores):
        return float(scores[-1])
    return float(np.nextafter(scores[allowed], np.inf))
