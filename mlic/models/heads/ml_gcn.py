"""ML-GCN (Chen et al., CVPR 2019): a label graph that produces the classifier itself.

Two GCN layers map the label word embeddings (C, E) over the correlation graph Â to one weight
vector per class: gc1 E -> 1024, LeakyReLU(0.2), gc2 1024 -> D with no activation, giving
W_cls (C, D). The logits are the globally pooled image features dotted with them,
logits = f . W_cls^T, with no bias and global max pooling by default (Megvii-Nanjing/ML-GCN
``models.py``; the reference pools ResNet-101 at 448 px with MaxPool2d(14)). The graph follows
ML-GCN's code (tau 0.4, p 0.25, column-sum re-weighting), see ``mlic.models.graph``.

W_cls does not depend on the image, so in eval it is computed once and cached like the label
graph head's channel weights; while training it is recomputed every step.
"""
from __future__ import annotations

import torch
from torch import nn

from mlic.models.graph import GraphConvolution, GraphOutputCache, LabelNodes, full_precision
from mlic.models.heads.registry import register_head
from mlic.models.heads.pooling import GlobalPool
from mlic.models.label_context import LabelContext


@register_head("ml_gcn")
class MLGCNHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, label_context: LabelContext | None = None,
                 embedding_dim: int = 384, hidden_dim: int = 1024, tau: float = 0.4, p: float = 0.25,
                 pooling: str = "max"):
        super().__init__()
        self.nodes = LabelNodes(num_classes, label_context, embedding_dim, tau, p)
        self.gc1 = GraphConvolution(embedding_dim, hidden_dim)
        self.gc2 = GraphConvolution(hidden_dim, in_features)
        self.activation = nn.LeakyReLU(0.2)
        self.pool = GlobalPool(pooling)
        self._weights = GraphOutputCache()

    def _graph_tensors(self) -> list[torch.Tensor]:
        modules = (self.nodes, self.gc1, self.gc2)
        return [t for m in modules for t in (*m.parameters(), *m.buffers())]

    def compute_classifier_weights(self) -> torch.Tensor:
        """W_cls (C, D) computed now from the graph, without the cache."""
        x, adjacency = self.nodes()
        with full_precision(x.device):
            return self.gc2(self.activation(self.gc1(x, adjacency)), adjacency)

    def classifier_weights(self) -> torch.Tensor:
        """W_cls (C, D): fresh while training, cached in eval until a graph tensor changes."""
        return self._weights.get(self._graph_tensors(), self.compute_classifier_weights, self.training)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, D, H, W) -> (B, C)
        pooled = self.pool(features)
        return pooled @ self.classifier_weights().to(pooled.dtype).T
