"""Fixed 2-D sine position encoding for a grid of feature-map tokens (the DETR form).

Carion et al., "End-to-End Object Detection with Transformers" (2020), as used by Query2Label and,
optionally, C-Tran. For a token at row y and column x of an H x W grid (1-based):

    y' = y / H * 2*pi,   x' = x / W * 2*pi          (normalize=True: each axis spans (0, 2*pi])
    f_i = temperature ** (2 * floor(i / 2) / n),    n = dim / 2 channels per axis
    channel i of an axis = sin(v / f_i) if i is even else cos(v / f_i),   v = y' or x'

The first n channels encode the row, the last n the column. Pairs (2j, 2j+1) share one frequency,
so each pair is a (sin, cos) rotation that sees position at that frequency. Dividing by the grid
size (rather than a fixed maximum) makes the encoding depend on relative position only, so it is
the same for a 14x14 map at 448 px and a 7x7 map at 224 px, at the cost of not telling sizes apart.
DETR divides by (H + 1e-6); the epsilon only guards its padding masks, which we do not have.
"""
from __future__ import annotations

import math

import torch


def sine_position_encoding(height: int, width: int, dim: int, device: torch.device | str | None = None,
                           dtype: torch.dtype = torch.float32, temperature: float = 10000.0,
                           scale: float = 2 * math.pi) -> torch.Tensor:
    """The (height * width, dim) encoding of a row-major grid; values lie in [-1, 1].

    Row-major order matches ``features.flatten(2)`` of a (B, D, H, W) map. Computed in float32 and
    cast to ``dtype`` at the end, so half-precision callers get a precise table.
    """
    if dim % 2:
        raise ValueError(f"sine position encoding needs an even dim (half per axis), got {dim}")
    n = dim // 2
    rows = torch.arange(1, height + 1, device=device, dtype=torch.float32) / height * scale
    cols = torch.arange(1, width + 1, device=device, dtype=torch.float32) / width * scale
    index = torch.arange(n, device=device)
    frequency = temperature ** (2 * torch.div(index, 2, rounding_mode="floor").float() / n)
    even = index % 2 == 0

    def encode(values: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, n)
        angles = values[:, None] / frequency
        return torch.where(even, angles.sin(), angles.cos())

    y = encode(rows)[:, None, :].expand(height, width, n)
    x = encode(cols)[None, :, :].expand(height, width, n)
    return torch.cat([y, x], dim=-1).reshape(height * width, dim).to(dtype)
