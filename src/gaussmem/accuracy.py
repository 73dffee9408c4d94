"""The mean-and-confidence-interval summary every evaluation reports.

Its own module because the support-query, online, open-set and generative evaluations
all summarise per-episode numbers the same way (Snell et al.'s 95% interval
`1.96 * std / sqrt(episodes)`, sample std), and none of them should import another to get it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class AccuracySummary:
    """Mean accuracy in percent and the half-width of its 95% confidence interval."""

    mean: float
    ci95: float
    episodes: int

    @classmethod
    def from_values(cls, values: np.ndarray) -> AccuracySummary:
        """Summary of per-episode fractions in [0, 1], `(episodes,)`."""
        values = np.asarray(values, dtype=np.float64) * 100.0
        if len(values) == 0:
            return cls(float("nan"), float("nan"), 0)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return cls(float(values.mean()), 1.96 * std / math.sqrt(len(values)), len(values))
