"""The paper's graph branch ("GAT re-weighting"): a label graph that re-weights feature channels.

Two graph layers (GAT or GCN) map the label word embeddings (C, E) over the label correlation graph
Â to node features X2 (C, D), each layer followed by LeakyReLU(0.2), the last included. The channel
weights are omega = sigmoid(max over the C nodes of X2), a D-vector that does not depend on the
image: a learned, static channel attention. The head multiplies the backbone map by omega, pools it
and classifies with a cosine (AngleSimpleLinear) or linear layer, as the DOR reference
(openvinotoolkit/deep-object-reid branch multilabel, ``torchreid/models/gcn.py``). With
``decoder={...}`` the re-weighted map goes to an ML-Decoder instead (the paper's "GAT + MLD" row).

Because omega is image-independent it is computed once in eval and cached (``GraphOutputCache``),
so inference costs one multiply; while training it is recomputed every step so the graph learns.

Reference differences: the reference's default layer is GCN (its released config never sets
``layer_type``); ours is GAT, the branch the paper describes. ``hidden_dim`` defaults to D
(``hidden_dim_scale`` 1).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlic.errors import ConfigError
from mlic.models.graph import (GraphAttention, GraphConvolution, GraphOutputCache, LabelNodes,
                               full_precision)
from mlic.models.heads.registry import build_head, register_head
from mlic.models.heads.cosine import CosineLinear
from mlic.models.heads.pooling import GlobalPool
from mlic.models.label_context import LabelContext

GRAPH_LAYERS = ("gat", "gcn")


@register_head("label_graph")
class LabelGraphHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, label_context: LabelContext | None = None,
                 embedding_dim: int = 384, layer: str = "gat", hidden_dim: int | None = None,
                 tau: float = 0.4, p: float = 0.25, pooling: str = "avg", cosine: bool = True,
                 scale: float = 23.0, learned_embeddings: bool = False,
                 decoder: dict[str, Any] | None = None):
        super().__init__()
        if layer not in GRAPH_LAYERS:
            raise ConfigError(f"model.head_params.layer must be one of {', '.join(GRAPH_LAYERS)}, "
                              f"got {layer!r}")
        hidden_dim = int(hidden_dim or in_features)
        self.nodes = LabelNodes(num_classes, label_context, embedding_dim, tau, p, learned_embeddings)
        graph_layer = GraphAttention if layer == "gat" else GraphConvolution
        self.gc1 = graph_layer(embedding_dim, hidden_dim)
        self.gc2 = graph_layer(hidden_dim, in_features)
        self.activation = nn.LeakyReLU(0.2)
        self._omega = GraphOutputCache()
        self.decoder = self.pool = self.fc = None
        if decoder is not None:
            # The decoder pools (cross-attention over the spatial tokens) and classifies itself;
            # pooling, cosine and scale then do not apply: put cosine/scale in ``decoder``.
            self.decoder = build_head("ml_decoder", in_features, num_classes, **dict(decoder))
        else:
            self.pool = GlobalPool(pooling)
            self.fc = CosineLinear(in_features, num_classes, scale) if cosine else nn.Linear(
                in_features, num_classes)

    def _graph_tensors(self) -> list[torch.Tensor]:
        modules = (self.nodes, self.gc1, self.gc2)
        return [t for m in modules for t in (*m.parameters(), *m.buffers())]

    def compute_channel_weights(self) -> torch.Tensor:
        """omega (D,) computed now from the graph, without the cache."""
        x, adjacency = self.nodes()
        with full_precision(x.device):
            x = self.activation(self.gc1(x, adjacency))
            x = self.activation(self.gc2(x, adjacency))   # X2: (C, D)
            return torch.sigmoid(x.amax(dim=0))

    def channel_weights(self) -> torch.Tensor:
        """omega (D,): fresh while training, cached in eval until a graph tensor changes."""
        return self._omega.get(self._graph_tensors(), self.compute_channel_weights, self.training)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, D, H, W) -> (B, C)
        omega = self.channel_weights().to(features.dtype)
        features = features * omega[None, :, None, None]
        if self.decoder is not None:
            return self.decoder(features)
        return self.fc(self.pool(features))
