"""The one interface every few-shot method speaks (after easyfsl's `FewShotClassifier`).

The evaluation harness, the online protocol and the benchmarks use only this interface,
so the paper's model and the baselines (ProtoNet, Matching Nets, Kaiser's memory) are
scored on the same episodes through the same code path:

    classifier.fit(support_images, support_labels)   # reset, then add the support set
    scores = classifier.predict_scores(query_images)  # (n_query, n_labels)
    known = classifier.known_scores_from_embeddings(classifier.embed(query_images))
    classifier.add_support(images, labels)           # incremental: the online protocol

Each method is two steps: `embed` maps every image on its own to one flat float vector,
and the embedding-level calls (`add_support_embeddings`, `predict_scores_from_embeddings`)
do everything that depends on the episode. The image-level calls above are just the two
chained. The split exists because in eval mode `embed` is a deterministic function of one
image, so the evaluation harness encodes each sample of a split once
(`gaussmem.embedding_cache`) instead of once per episode it appears in.

Labels are episode-local integers 0..n_labels-1. A label with no support yet scores
`-inf`, so `predict` never picks it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

#: Prediction while no label has support yet (the online protocol's first item).
NO_PREDICTION = -1


class FewShotClassifier(nn.Module, ABC):
    """A model that learns classes from a few labelled images, then labels new images.

    Subclasses implement `embed`, `reset`, `add_support_embeddings`,
    `predict_scores_from_embeddings` and `from_checkpoint`; everything runs under
    `torch.no_grad` in eval mode when called from the evaluation harness.
    """

    #: Registry name; set by `register_method`.
    method_name: str = ""
    #: Device types `embed` can run on (see `encoder_to_`); the episode logic and its
    #: state (memories, prototypes) always run on the CPU.
    encoder_device_types: tuple[str, ...] = ("cpu",)

    def encoder_to_(self, device: torch.device) -> FewShotClassifier:
        """Run `embed` on `device` (rows still come back on the CPU); returns self.
        Methods that support other devices override `_move_encoder_`."""
        if device.type not in self.encoder_device_types:
            raise ValueError(f"method {self.method_name!r} embeds on "
                             f"{' or '.join(self.encoder_device_types)} only, not {device}")
        self._move_encoder_(device)
        return self

    def _move_encoder_(self, device: torch.device) -> None:
        del device  # CPU-only methods: their encoder is already there

    @abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image embeddings `(n, d)` float of `images (n, C, H, W)`.

        Row i must depend on image i alone (in eval mode): anything that looks at the
        whole support set belongs in the embedding-level calls, or cached embeddings
        would be wrong. Methods encode in batches of their `embed_batch_size`.
        """

    @abstractmethod
    def reset(self) -> None:
        """Forget every support example (start a new episode)."""

    @abstractmethod
    def add_support_embeddings(self, support_embeddings: torch.Tensor,
                               support_labels: torch.Tensor) -> None:
        """Learn from `support_embeddings (n, d)` (rows of `embed`) with
        `support_labels (n,)` int64, on top of what was learnt since the last `reset`."""

    @abstractmethod
    def predict_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        """Scores `(n_query, n_labels)` of `query_embeddings (n_query, d)` (rows of
        `embed`; higher = more likely); unseen labels are -inf."""

    def known_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        """How well each of `query_embeddings (n_query, d)` matches what was learnt:
        `(n_query,)`, higher = more likely one of the known labels (the open-set
        protocol ranks known against unknown queries by it; `gaussmem.open_set`).

        Default: the best label's score, which is each method's natural similarity to
        its nearest support entry where scores are unnormalised (MA-VAE: -min SKL;
        ProtoNet: -min squared distance; Kaiser: max cosine). A method whose scores are
        normalised over the labels (Matching Nets' log-probabilities) overrides it,
        since a normalised score says how sure it is among the labels, not whether the
        query belongs to any of them.
        """
        return self.predict_scores_from_embeddings(query_embeddings).amax(dim=1)

    def add_support(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Learn from `support_images (n, C, H, W)` with `support_labels (n,)` int64,
        on top of what was learnt since the last `reset`."""
        self.add_support_embeddings(self.embed(support_images), support_labels)

    def predict_scores(self, query_images: torch.Tensor) -> torch.Tensor:
        """Scores `(n_query, n_labels)` (higher = more likely); unseen labels are -inf."""
        return self.predict_scores_from_embeddings(self.embed(query_images))

    def fit(self, support_images: torch.Tensor, support_labels: torch.Tensor
            ) -> FewShotClassifier:
        """Reset, then learn the support set; returns self."""
        self.reset()
        self.add_support(support_images, support_labels)
        return self

    def predict(self, query_images: torch.Tensor) -> torch.Tensor:
        """Predicted labels `(n_query,)` int64 (argmax of `predict_scores`)."""
        return self.predict_scores(query_images).argmax(dim=1)

    def online_predictions_from_embeddings(self, embeddings: torch.Tensor,
                                           labels: torch.Tensor) -> torch.Tensor:
        """Kaiser's online protocol on one stream of `embeddings (n, d)` with `labels
        (n,)`: reset, then predict each item and learn it. Returns `(n,)` predicted
        labels, `NO_PREDICTION` (-1) while no label has support.

        One item at a time through the embedding-level calls; a method whose memory has
        a cheaper sequential update (the MA-VAE) overrides this.
        """
        self.reset()
        predictions = torch.full((len(labels),), NO_PREDICTION, dtype=torch.int64)
        for index in range(len(labels)):
            item = slice(index, index + 1)
            scores = self.predict_scores_from_embeddings(embeddings[item])
            if torch.isfinite(scores).any():
                predictions[index] = scores.argmax(dim=1)[0]
            self.add_support_embeddings(embeddings[item], labels[item])
        return predictions

    def online_predictions(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`online_predictions_from_embeddings` of a stream of `images (n, C, H, W)`
        (encoded in one batched pass: the encoder is per-image)."""
        return self.online_predictions_from_embeddings(self.embed(images), labels)

    @classmethod
    @abstractmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> FewShotClassifier:
        """Rebuild the trained classifier from a checkpoint dict (see gaussmem.checkpoint)."""
