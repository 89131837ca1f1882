"""The baseline head: global pooling, dropout, one linear layer (ASL's and timm's default)."""
from __future__ import annotations

import torch
from torch import nn

from mlic.models.heads import register_head
from mlic.models.heads.pooling import GlobalPool


@register_head("linear")
class LinearHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, pooling: str = "avg", dropout: float = 0.0):
        super().__init__()
        self.pool = GlobalPool(pooling)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(features)))
