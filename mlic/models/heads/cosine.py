"""Cosine logits: logit_c = scale * cos(x, w_c), the form the AM/AAM losses expect.

Features and class weights are L2-normalised, so a logit depends only on the angle between them;
``scale`` (s) sets how sharp the sigmoid is. Every cosine head ends in ``cosine_logits``: the
cosine clamped to [-1, 1] (rounding can step outside), or, for a head with a learnt per-class
bias (ML-Decoder's cosine form), s * (cos + bias) without a clamp. ``CosineLinear`` is the
classifier without a bias, as the paper's AngleSimpleLinear; ``paired_cosine`` compares one
vector per class with that class's own weight (Query2Label, C-Tran).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_logits(cos: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """s * cos (clamped to [-1, 1]), or s * (cos + bias) for a head with a learnt bias."""
    if bias is not None:
        return scale * (cos + bias)
    return scale * cos.clamp(-1.0, 1.0)


def paired_cosine(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos(h_c, w_c) for each class c: h (..., C, D), weight (C, D) -> (..., C)."""
    return (F.normalize(h, dim=-1) * F.normalize(weight, dim=-1)).sum(-1)


class CosineLinear(nn.Module):
    def __init__(self, in_features: int, num_classes: int, scale: float = 23.0):
        super().__init__()
        self.scale = float(scale)
        self.weight = nn.Parameter(F.normalize(torch.randn(num_classes, in_features), dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cosine_logits(F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=1)),
                             self.scale)

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
