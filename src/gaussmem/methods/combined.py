"""Several classifiers scoring together: a seed ensemble, test-time views, or both.

Neither is in the paper. One trained model's embedding of an image carries accidents
of that model's training and of where the character sits in the frame; adding the
scores of several members averages them out. A member is one classifier looking at one
fixed view of the images (`gaussmem.data.views`). Each member keeps its own episode
state (for the MA-VAE, its own memory, written with the paper's update rule), and a
query's score for a label is the sum of the members' scores. For the MA-VAE a score is
-SKL to the label's nearest entry, so the sum multiplies the members' similarities
exp(-SKL).

The combined embedding of an image is its members' embeddings side by side, so the
evaluation harness caches it like any other (`gaussmem.embedding_cache`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gaussmem.data.views import apply_view
from gaussmem.methods.base import FewShotClassifier


class ScoreSum(FewShotClassifier):
    """Members `(classifier, view map (2, 3) or None for the plain images)`; every
    classifier object must be its own (each holds its own memory), though several may
    carry the same weights."""

    method_name = "score-sum"

    def __init__(self, members: list[tuple[FewShotClassifier, torch.Tensor | None]]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a combination needs at least one member")
        classifiers = [classifier for classifier, _ in members]
        if len({id(classifier) for classifier in classifiers}) < len(classifiers):
            raise ValueError("each member needs a classifier object of its own: members "
                             "sharing one would share one memory")
        self.members = nn.ModuleList(classifiers)
        self.views = [view for _, view in members]
        self.encoder_device_types = tuple(
            device for device in classifiers[0].encoder_device_types
            if all(device in classifier.encoder_device_types for classifier in classifiers))
        # Each member's embedding width, known after the first `embed`.
        self._widths: list[int] | None = None

    def _move_encoder_(self, device: torch.device) -> None:
        for classifier in self.members:
            classifier.encoder_to_(device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        rows = [classifier.embed(images if view is None else apply_view(images, view))
                for classifier, view in zip(self.members, self.views, strict=True)]
        self._widths = [row.shape[1] for row in rows]
        return torch.cat(rows, 1)

    def _split(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._widths is None:
            raise RuntimeError("ScoreSum splits rows of its own `embed`: call it first")
        return embeddings.split(self._widths, dim=1)

    def reset(self) -> None:
        for classifier in self.members:
            classifier.reset()

    def add_support_embeddings(self, support_embeddings: torch.Tensor,
                               support_labels: torch.Tensor) -> None:
        for classifier, rows in zip(self.members, self._split(support_embeddings),
                                    strict=True):
            classifier.add_support_embeddings(rows, support_labels)

    def predict_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        return torch.stack([
            classifier.predict_scores_from_embeddings(rows)
            for classifier, rows in zip(self.members, self._split(query_embeddings),
                                        strict=True)]).sum(0)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> ScoreSum:
        raise TypeError("a ScoreSum is built from its members "
                        "(gaussmem.evaluate.combined_classifier), not from one checkpoint")
