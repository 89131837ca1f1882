"""Global pooling of a feature map: average, max, or their sum (the paper's "avg+max")."""
from __future__ import annotations

import torch
from torch import nn

from mlic.errors import ConfigError

POOLINGS = ("avg", "max", "avg+max")


class GlobalPool(nn.Module):
    def __init__(self, kind: str = "avg"):
        super().__init__()
        if kind not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {kind!r}")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, H, W) -> (B, D)
        if self.kind == "avg":
            return x.mean(dim=(2, 3))
        if self.kind == "max":
            return x.amax(dim=(2, 3))
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))
