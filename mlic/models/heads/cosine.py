"""Cosine classifier: logit_c = scale * cos(x, w_c), the form the AM/AAM losses expect.

Features and class weights are L2-normalised, so a logit depends only on the angle between them;
``scale`` (s) sets how sharp the sigmoid is. Without a bias, as the paper's AngleSimpleLinear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineLinear(nn.Module):
    def __init__(self, in_features: int, num_classes: int, scale: float = 23.0):
        super().__init__()
        self.scale = float(scale)
        self.weight = nn.Parameter(F.normalize(torch.randn(num_classes, in_features), dim=1))

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(x)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, scale={self.scale}"


def cosine_scale(module: nn.Module) -> float | None:
    """The scale s of a head whose logits are s * cosine, or None for a plain linear head."""
    for sub in module.modules():
        if isinstance(sub, CosineLinear):
            return sub.scale
        if getattr(sub, "cosine", False) is True and hasattr(sub, "scale"):
            return float(sub.scale)
    return None
