"""Gradient-norm clipping, over the whole model or per part (backbone, head).

Why per part (``train.grad_clip_scope: parts``, the default): a freshly initialised decoder head's
gradient dwarfs the pretrained backbone's. On one batch of the emoji benchmark at initialisation
(EfficientNet-Lite0, 159 labels, summed loss; benchmarks/results/gradient_share.md) the gradient
norms of backbone / head are 227 / 200 with a linear head and ASL, but 5.8 / 223 with the cosine
ML-Decoder and AAM and 3.0 / 212 with the label graph. One global norm clipped at 10 then moves the
backbone 0.26 and 0.14 (times the lr) against 7.5 under the linear head, 30-50 times less, and the
decoder rows of a short run learn mostly in their head. Clipping each part at the bound keeps each
part's direction and bounds each part's step alike; a part under the bound is left as it is.
``model`` clips the one global norm (torch's ``clip_grad_norm_`` over every parameter).
"""
from __future__ import annotations

import math

from torch import nn

SCOPES = ("parts", "model")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers (they share its parameters)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def gradient_parts(model: nn.Module, scope: str) -> list[list[nn.Parameter]]:
    """The parameter sets clipped apart: [backbone, head] for a classifier with a ``head`` under
    ``parts``, else one set of every trainable parameter."""
    if scope not in SCOPES:
        raise ValueError(f"grad_clip_scope must be one of {SCOPES}, got {scope!r}")
    plain = unwrap(model)
    trainable = [p for p in plain.parameters() if p.requires_grad]
    head = getattr(plain, "head", None)
    if scope == "model" or not isinstance(head, nn.Module):
        return [trainable]
    in_head = {id(p) for p in head.parameters()}
    parts = [[p for p in trainable if id(p) not in in_head], [p for p in trainable if id(p) in in_head]]
    return [part for part in parts if part]


class GradientClipper:
    """Clips the gradients of ``model`` to norm ``max_norm`` (> 0) per part (``scope``)."""

    def __init__(self, model: nn.Module, max_norm: float, scope: str = "parts"):
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.parts, self.max_norm = gradient_parts(model, scope), float(max_norm)

    def __call__(self) -> tuple[float, bool]:
        """Returns (the whole gradient's norm before clipping, whether any part was clipped); the
        norm is not finite when a gradient is not (the caller skips the step then)."""
        norms = [float(nn.utils.clip_grad_norm_(part, self.max_norm)) for part in self.parts]
        return math.sqrt(sum(n * n for n in norms)), any(n > self.max_norm for n in norms)
