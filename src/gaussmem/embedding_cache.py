"""Per-sample embeddings of one evaluated split, each image encoded at most once.

An evaluation draws hundreds to thousands of episodes from one split, and the same
images come back in many of them (Omniglot's 33,840 test drawings, 400-way episodes).
In eval mode a classifier's `embed` is a deterministic function of one image, so an
image's row can be computed the first time an episode needs it and reused afterwards;
the encoder, not the episode logic, is what costs.
"""

from __future__ import annotations

import numpy as np
import torch

from gaussmem.data.datasets import FewShotDataset
from gaussmem.methods.base import FewShotClassifier


class EmbeddingCache:
    """`classifier.embed` of `dataset`'s samples by sample id, filled lazily.

    Holds an `(dataset.n_samples, d)` tensor and a filled mask; `lookup` encodes only the
    ids not embedded yet. The rows are valid only for the classifier's weights and mode
    at the time they were encoded: build a new cache after training changes them.
    With `enabled=False` every lookup encodes its ids afresh (the reference path, and
    the baseline that shows the speed gain).
    """

    def __init__(self, classifier: FewShotClassifier, dataset: FewShotDataset, *,
                 enabled: bool = True) -> None:
        self.classifier = classifier
        self.dataset = dataset
        self.enabled = enabled
        self.filled = torch.zeros(dataset.n_samples, dtype=torch.bool)
        # Allocated at the first encoding, when the embedding size is known.
        self.embeddings: torch.Tensor | None = None
        #: Images run through the encoder so far (the cost the cache saves).
        self.encoded_images = 0

    @torch.no_grad()
    def lookup(self, sample_ids: np.ndarray) -> torch.Tensor:
        """Embeddings `(len(sample_ids), d)` of flat `sample_ids` (repeats allowed), in
        their order; the ids not seen before are encoded in one batched `embed` call."""
        ids = torch.from_numpy(np.asarray(sample_ids, dtype=np.int64).ravel())
        if len(ids) == 0:
            raise ValueError("lookup needs at least one sample id")
        if int(ids.min()) < 0 or int(ids.max()) >= len(self.filled):
            raise IndexError(f"sample ids must lie in 0..{len(self.filled) - 1} for "
                             f"{self.dataset.name}; got {int(ids.min())}..{int(ids.max())}")
        if not self.enabled:
            return self._encode(ids)
        missing = ids[~self.filled[ids]].unique()
        if len(missing):
            rows = self._encode(missing)
            if self.embeddings is None:
                self.embeddings = rows.new_empty(len(self.filled), rows.shape[1])
            self.embeddings[missing] = rows
            self.filled[missing] = True
        assert self.embeddings is not None  # every id is filled by now
        return self.embeddings[ids]

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        self.encoded_images += len(ids)
        return self.classifier.embed(self.dataset.sample_tensor(ids.numpy()))
