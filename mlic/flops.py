"""Compute cost of a model: GFLOPs counted as multiply-accumulates, and parameters.

The paper's tables (like most image-classification papers, and timm's model cards) report
"GFLOPs" that are really giga multiply-accumulates (GMACs): one MAC per weight per output element
of a convolution or matrix product. torch's own ``FlopCounterMode`` counts 2 FLOPs per MAC for
those ops; we halve it. Element-wise ops (activations, normalisation, softmax, pooling) are not
counted, as in the usual counters.

The model is counted in eval mode after one warm-up call, so heads whose label-graph output does
not depend on the image (cached at inference) are counted as they run when deployed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mlic.models import MultiLabelClassifier, create_model
from mlic.models.heads import head_uses_label_context
from mlic.models.label_context import LabelContext


@dataclass
class Cost:
    backbone: str
    head: str
    num_classes: int
    image_size: int
    gmacs_total: float
    gmacs_backbone: float
    gmacs_head: float
    params_total_m: float
    params_head_m: float


def placeholder_label_context(num_classes: int, embedding_dim: int = 384, seed: int = 0) -> LabelContext:
    """A random label graph of the right shape: cost does not depend on the values."""
    rng = np.random.default_rng(seed)
    conditional = rng.random((num_classes, num_classes))
    np.fill_diagonal(conditional, 0.0)
    embeddings = rng.standard_normal((num_classes, embedding_dim)).astype(np.float32)
    return LabelContext([f"label{i}" for i in range(num_classes)], conditional, embeddings, "random")


def count_macs(model: torch.nn.Module, images: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Total MACs of one forward, and MACs per top-level child module."""
    # The fused fast path of nn.MultiheadAttention at inference is invisible to the counter;
    # the plain path computes the same result through countable matmuls.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    # The counter's module tracker trips over views of parameters that require grad under no_grad;
    # counting needs no gradients, so switch them off for the count and restore them after.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with torch.no_grad():
            model(images)  # warm-up: fills inference caches (the label graph's channel weights)
            with FlopCounterMode(display=False) as counter:
                model(images)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for param, flag in flags:
            param.requires_grad_(flag)
    per_module = {}
    for name, ops in counter.get_flop_counts().items():
        per_module[name] = sum(ops.values()) / 2
    return counter.get_total_flops() / 2, per_module


def model_cost(model: MultiLabelClassifier, image_size: int) -> Cost:
    model.eval()
    images = torch.randn(1, 3, image_size, image_size)
    total, per_module = count_macs(model, images)
    backbone = next((v for k, v in per_module.items() if k.endswith(".backbone")), 0.0)
    params = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for p in model.head.parameters())
    cfg = model.model_config
    return Cost(cfg["backbone"], cfg["head"], cfg["num_classes"], image_size, total / 1e9,
                backbone / 1e9, (total - backbone) / 1e9, params / 1e6, head_params / 1e6)


def cost_of(backbone: str, head: str, num_classes: int, image_size: int,
            head_params: dict | None = None) -> Cost:
    """Cost of a freshly built model (random weights: cost does not depend on them)."""
    head_params = dict(head_params or {})
    context = None
    if head_uses_label_context(head):
        context = placeholder_label_context(num_classes, int(head_params.get("embedding_dim", 384)))
    model = create_model(backbone, num_classes, head=head, head_params=head_params,
                         label_context=context, image_size=image_size)
    return model_cost(model, image_size)


def format_cost(cost: Cost) -> str:
    return (f"{cost.backbone} + {cost.head}, {cost.num_classes} classes, {cost.image_size} px:\n"
            f"  GFLOPs (multiply-accumulates): {cost.gmacs_total:.2f} total = "
            f"{cost.gmacs_backbone:.2f} backbone + {cost.gmacs_head:.3f} head\n"
            f"  parameters: {cost.params_total_m:.2f} M total, {cost.params_head_m:.2f} M in the head")
