"""The paper's method behind the classifier interface: a VAE's content posteriors in a
Gaussian memory, read by symmetric KL (Tseran & Harada 2017, section 3.1).

Support: each support image's q(z_c | x) is written into a fresh `GaussianMemory` with
`write_support_` (a class's first shot creates its entry, later shots are merged by
moment matching with w = (k-1)/k, 1/k). Query: the label of the entry with the smallest
symmetric KL, i.e. the largest similarity exp(-SKL) of eq. 1; scores are -SKL, which
ranks the same but never underflows. Online (Kaiser's protocol): predict, then apply the
paper's rule `update_` (merge into the nearest entry if its label is right, else create).
"""

from __future__ import annotations

from typing import Any

import torch

from gaussmem.config import TrainConfig, from_dict
from gaussmem.gaussian import pairwise_symmetric_kl
from gaussmem.memory import NOT_FOUND, GaussianMemory
from gaussmem.methods.base import FewShotClassifier
from gaussmem.methods.registry import register_method
from gaussmem.models.vae import DiagonalGaussian, GaussianVAE
from gaussmem.plumbing.device import module_device

#: Images per encoder call at evaluation: bounds activation memory for 400-way episodes
#: and suits a CPU (results/speed/speed-cpu.json, "embedding").
DEFAULT_EMBED_BATCH = 128


@register_method("mavae")
class MemoryAugmentedVAE(FewShotClassifier):
    """`GaussianVAE` + `GaussianMemory`; classification uses only z_c's posterior."""

    encoder_device_types = ("cpu", "cuda")

    def __init__(self, vae: GaussianVAE, *, embed_batch_size: int = DEFAULT_EMBED_BATCH,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.vae = vae
        self.embed_batch_size = embed_batch_size
        self.channels_last = channels_last
        self.memory = self._new_memory(1)

    def _move_encoder_(self, device: torch.device) -> None:
        self.vae.to(device)

    def _new_memory(self, capacity: int) -> GaussianMemory:
        # Evaluation memories are deterministic: no age noise, fixed seed.
        return GaussianMemory(capacity, self.vae.config.content_dim, seed=0)

    def _ensure_capacity(self, extra: int) -> None:
        """Grow the memory (keeping its entries) so `extra` more items always fit."""
        needed = len(self.memory) + extra
        if needed > self.memory.capacity:
            self.memory.grow_(max(needed, 2 * self.memory.capacity))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """q(z_c | x) of `images (n, C, H, W)`, encoded in batches on the VAE's device, as
        one flat row per image on the CPU: `(n, 2 * d_c)` = `cat([mean, log_var], 1)` (see
        `content_posterior`). The memory of an evaluation episode stays on the CPU."""
        device = module_device(self.vae)
        rows = []
        for batch in images.split(self.embed_batch_size):
            batch = batch.to(device)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            content = self.vae.encode_content(batch)
            rows.append(torch.cat([content.mean, content.log_var], 1).cpu())
        return torch.cat(rows)

    @staticmethod
    def content_posterior(embeddings: torch.Tensor) -> DiagonalGaussian:
        """The `DiagonalGaussian` `(n, d_c)` each of rows `(n, 2 * d_c)` of `embed`."""
        mean, log_var = embeddings.chunk(2, dim=1)
        return DiagonalGaussian(mean, log_var)

    def reset(self) -> None:
        self.memory.reset_()

    @torch.no_grad()
    def add_support_embeddings(self, support_embeddings: torch.Tensor,
                               support_labels: torch.Tensor) -> None:
        content = self.content_posterior(support_embeddings)
        self._ensure_capacity(len(support_labels))
        self.memory.write_support_(content.mean, content.var, support_labels)

    @torch.no_grad()
    def predict_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        """`(n_query, n_labels)`: -SKL to each label's nearest entry; -inf if no entry."""
        content = self.content_posterior(query_embeddings)
        memory = self.memory
        occupied = memory.valid.nonzero()[:, 0]
        labels = memory.labels[occupied]
        n_labels = int(labels.max()) + 1 if len(labels) else 1
        scores = content.mean.new_full((len(content.mean), n_labels), -torch.inf)
        if not len(occupied):
            return scores
        # One GEMM per 1024 queries (gaussian.pairwise_symmetric_kl) instead of an
        # (n_query, n_entries, d) broadcast: what keeps 400-way episodes cheap.
        divergence = pairwise_symmetric_kl(content.mean, content.var, memory.means[occupied],
                                           memory.variances[occupied], chunk_size=1024)
        index = labels[None, :].expand_as(divergence)
        return scores.scatter_reduce_(1, index, -divergence, reduce="amax")

    @torch.no_grad()
    def online_predictions_from_embeddings(self, embeddings: torch.Tensor,
                                           labels: torch.Tensor) -> torch.Tensor:
        """Kaiser's online protocol on one stream, with the paper's memory rule: for each
        item, query the nearest entry, then `update_` with the true label (merge into it
        if its label is right, else create). Returns `(n,)` predicted labels, NOT_FOUND
        (-1) while nothing matches."""
        self.reset()
        content = self.content_posterior(embeddings)
        self._ensure_capacity(len(labels))
        predictions = torch.full((len(labels),), NOT_FOUND, dtype=torch.int64)
        var = content.var
        for index in range(len(labels)):
            item = slice(index, index + 1)
            predictions[index] = self.memory.query(content.mean[item], var[item], 1).labels[0, 0]
            self.memory.update_(content.mean[item], var[item], labels[item])
        return predictions

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> MemoryAugmentedVAE:
        config = from_dict(TrainConfig, checkpoint["config"])
        vae = GaussianVAE(config.model)
        vae.load_state_dict(checkpoint["model"])
        classifier = cls(vae, channels_last=config.channels_last)
        if config.channels_last:
            classifier.vae.to(memory_format=torch.channels_last)
        return classifier.eval()
