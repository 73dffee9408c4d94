"""Matching Networks (Vinyals et al. 2016) behind the classifier interface.

A query's label distribution is an attention over the support set:
`p(y | x, S) = sum_i a(x, x_i) [y_i = y]`, `a = softmax_i(scale * cos(f(x), g(x_i)))`.
Scores are `log p(y | x, S)` (-inf for a label with no support). Without full context
embeddings (FCE) f = g = the Conv4 trunk. With FCE (the paper's appendix), g embeds each
support item in the context of the whole support set (a bidirectional LSTM over it, plus
a skip connection) and f reads the support set with an attention LSTM for `fce_steps`
steps. Training: one `n_way`-way episode per step, negative log-likelihood of the
queries' labels; the same sampler and episode layout as ProtoNet.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gaussmem.config import MatchingConfig, TrainConfig, from_dict
from gaussmem.methods.base import FewShotClassifier
from gaussmem.methods.protonet import DEFAULT_EMBED_BATCH, ProtoNetTraining, split_episode
from gaussmem.methods.registry import register_method, register_training
from gaussmem.methods.training import embed_in_batches
from gaussmem.models.encoders import Conv4Backbone


class MatchingNetwork(nn.Module):
    """Conv4 trunk and, with `config.fce`, the two context LSTMs (feature size d)."""

    def __init__(self, config: MatchingConfig, image_size: int = 28) -> None:
        super().__init__()
        self.encoder = Conv4Backbone(hidden_channels=config.hidden_channels,
                                     n_blocks=config.n_blocks, image_size=image_size)
        self.fce = config.fce
        self.fce_steps = config.fce_steps
        dim = self.encoder.out_features
        if self.fce:
            self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
            self.query_lstm = nn.LSTMCell(2 * dim, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image features `(n, d)` (f' = g' in the paper)."""
        return self.encoder(images)

    def contextualize(self, support: torch.Tensor, queries: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(g(x_i | S) `(n_support, d)`, f(x | S) `(n_query, d)`); identity without FCE."""
        if not self.fce:
            return support, queries
        both, _ = self.support_lstm(support[None])  # (1, n_support, 2d): forward, backward
        forward, backward = both[0].chunk(2, dim=1)
        support = support + forward + backward
        hidden, cell = queries, torch.zeros_like(queries)
        for _ in range(self.fce_steps):
            attention = torch.softmax(hidden @ support.T, dim=1)
            read = attention @ support
            hidden, cell = self.query_lstm(torch.cat([queries, read], 1), (hidden, cell))
            hidden = hidden + queries
        return support, hidden


def matching_log_probs(support: torch.Tensor, support_labels: torch.Tensor,
                       queries: torch.Tensor, n_labels: int, cosine_scale: float
                       ) -> torch.Tensor:
    """`(n_query, n_labels)` log p(y | x, S): cosine attention summed per label."""
    similarity = F.normalize(queries, dim=1) @ F.normalize(support, dim=1).T
    attention = torch.softmax(cosine_scale * similarity, dim=1)
    probs = attention.new_zeros(len(queries), n_labels)
    probs = probs.index_add(1, support_labels, attention)
    return probs.clamp_min(1e-30).log().masked_fill(probs == 0, -torch.inf)


def matching_loss(network: MatchingNetwork, embeddings: torch.Tensor, n_way: int,
                  n_shot: int, cosine_scale: float) -> dict[str, torch.Tensor]:
    """Negative log-likelihood of the queries' labels under the support attention."""
    support, queries, labels = split_episode(embeddings, n_way, n_shot)
    support, queries = network.contextualize(support, queries)
    support_labels = torch.arange(n_way, device=embeddings.device).repeat(n_shot)
    log_probs = matching_log_probs(support, support_labels, queries, n_way, cosine_scale)
    loss = F.nll_loss(log_probs.clamp_min(-1e4), labels)
    accuracy = (log_probs.argmax(1) == labels).float().mean().detach()
    return {"loss": loss, "accuracy": accuracy}


@register_method("matching")
class MatchingNetworkClassifier(FewShotClassifier):
    """Keeps the support features; FCE re-reads the whole support set per prediction."""

    def __init__(self, network: MatchingNetwork, *, cosine_scale: float = 1.0,
                 embed_batch_size: int = DEFAULT_EMBED_BATCH, channels_last: bool = True
                 ) -> None:
        super().__init__()
        self.network = network
        self.cosine_scale = cosine_scale
        self.embed_batch_size = embed_batch_size
        self.channels_last = channels_last
        self.reset()

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image features f'(x) = g'(x) `(n, d)`, before full context embeddings:
        FCE reads the whole support set, so it runs in `predict_scores_from_embeddings`."""
        return embed_in_batches(self.network, images, self.embed_batch_size,
                                self.channels_last)

    def reset(self) -> None:
        self._support: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @torch.no_grad()
    def add_support_embeddings(self, support_embeddings: torch.Tensor,
                               support_labels: torch.Tensor) -> None:
        self._support.append(support_embeddings)
        self._labels.append(support_labels)

    @torch.no_grad()
    def predict_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        """`(n_query, n_labels)` log p(y | x, S); -inf for labels without support."""
        if not self._support:
            return torch.full((len(query_embeddings), 1), -torch.inf)
        support, labels = torch.cat(self._support), torch.cat(self._labels)
        support, queries = self.network.contextualize(support, query_embeddings)
        return matching_log_probs(support, labels, queries, int(labels.max()) + 1,
                                  self.cosine_scale)

    @torch.no_grad()
    def known_scores_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        """`(n_query,)`: the largest cosine similarity to a support item (after full
        context embeddings), the quantity the attention is a softmax of; -inf without
        support."""
        if not self._support:
            return torch.full((len(query_embeddings),), -torch.inf)
        support, queries = self.network.contextualize(torch.cat(self._support),
                                                      query_embeddings)
        return (F.normalize(queries, dim=1) @ F.normalize(support, dim=1).T).amax(dim=1)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> MatchingNetworkClassifier:
        config = from_dict(TrainConfig, checkpoint["config"])
        network = MatchingNetwork(config.matching, config.model.image_size)
        if config.channels_last:
            network = network.to(memory_format=torch.channels_last)
        network.load_state_dict(checkpoint["model"])
        return cls(network, cosine_scale=config.matching.cosine_scale,
                   channels_last=config.channels_last).eval()


@register_training("matching")
class MatchingTraining(ProtoNetTraining):
    """ProtoNet's episodes and optimizer, Matching Nets' network and loss."""

    def build_model(self) -> nn.Module:
        network = MatchingNetwork(self.config.matching, self.config.model.image_size)
        return network.to(memory_format=torch.channels_last) if self.config.channels_last \
            else network

    def episode_loss(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        episodes = self.config.episodes
        return matching_loss(self.model, embeddings, episodes.n_way, episodes.n_shot,
                             self.config.matching.cosine_scale)

    def classifier(self) -> FewShotClassifier:
        return MatchingNetworkClassifier(self.evaluated_model,
                                         cosine_scale=self.config.matching.cosine_scale,
                                         channels_last=self.config.channels_last)
