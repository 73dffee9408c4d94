"""The one interface every few-shot method speaks (after easyfsl's `FewShotClassifier`).

The evaluation harness, the online protocol and the benchmarks use only this interface,
so the paper's model and the baselines (ProtoNet, Matching Nets, Kaiser's memory) are
scored on the same episodes through the same code path:

    classifier.fit(support_images, support_labels)   # reset, then add the support set
    scores = classifier.predict_scores(query_images)  # (n_query, n_labels)
    classifier.add_support(images, labels)           # incremental: the online protocol

Labels are episode-local integers 0..n_labels-1. A label with no support yet scores
`-inf`, so `predict` never picks it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class FewShotClassifier(nn.Module, ABC):
    """A model that learns classes from a few labelled images, then labels new images.

    Subclasses implement `reset`, `add_support` and `predict_scores`; everything runs
    under `torch.no_grad` in eval mode when called from the evaluation harness.
    """

    #: Registry name; set by `register_method`.
    method_name: str = ""

    @abstractmethod
    def reset(self) -> None:
        """Forget every support example (start a new episode)."""

    @abstractmethod
    def add_support(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Learn from `support_images (n, C, H, W)` with `support_labels (n,)` int64,
        on top of what was learnt since the last `reset`."""

    @abstractmethod
    def predict_scores(self, query_images: torch.Tensor) -> torch.Tensor:
        """Scores `(n_query, n_labels)` (higher = more likely); unseen labels are -inf."""

    def fit(self, support_images: torch.Tensor, support_labels: torch.Tensor
            ) -> FewShotClassifier:
        """Reset, then learn the support set; returns self."""
        self.reset()
        self.add_support(support_images, support_labels)
        return self

    def predict(self, query_images: torch.Tensor) -> torch.Tensor:
        """Predicted labels `(n_query,)` int64 (argmax of `predict_scores`)."""
        return self.predict_scores(query_images).argmax(dim=1)

    @classmethod
    @abstractmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> FewShotClassifier:
        """Rebuild the trained classifier from a checkpoint dict (see gaussmem.checkpoint)."""
