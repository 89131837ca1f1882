"""The baseline head: global pooling, dropout, then a linear or a cosine classifier.

``cosine=True`` gives the paper's AngleSimpleLinear form, logit = scale * cos(pooled, w_c), for the
AM/AAM losses; the default is the plain linear layer of ASL and timm.
"""
from __future__ import annotations

import torch
from torch import nn

from mlic.models.heads.registry import register_head
from mlic.models.heads.cosine import CosineLinear
from mlic.models.heads.pooling import GlobalPool


@register_head("linear")
class LinearHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, pooling: str = "avg", dropout: float = 0.0,
                 cosine: bool = False, scale: float = 23.0):
        super().__init__()
        self.pool = GlobalPool(pooling)
        self.dropout = nn.Dropout(dropout)
        self.fc = CosineLinear(in_features, num_classes, scale) if cosine else nn.Linear(
            in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(features)))
