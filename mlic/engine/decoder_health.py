"""Two numbers that show whether a decoder head still looks at the image, logged every epoch.

A freshly initialised ML-Decoder trained by SGD on the summed AAM loss can collapse in its first
steps (docs/training.md, "The decoder collapse"): the backbone's features are post-ReLU, so they
share a large mean, and the loss summed over batch and classes pushes every weight that reads that
mean in one direction. The cross-attention output grows by orders of magnitude, becomes the same
for every image, and after the post-norm LayerNorms the queries carry almost nothing of the image.
The model then predicts label frequencies until (if ever) it recovers. Two measures show it:

* ``attn_ratio``: mean norm of the last cross-attention's output over the mean norm of its queries.
  About 0.1-1 at initialisation; a collapse drives it to 10-1000.
* ``image_share``: the share of the decoder output's second moment that varies between images,
  sum ||h - mean_over_images(h)||^2 / sum ||h||^2, in [0, 1]. 0 means one output for every image.

They apply to heads with a cross-attention named ``cross_attn`` (ML-Decoder, Query2Label, the label
graph feeding an ML-Decoder); ``decoder_health`` returns None for the others.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def last_cross_attention(head: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(the last cross-attention, the decoder layer holding it), or None if the head has none."""
    modules = dict(head.named_modules())
    found = None
    for name, module in modules.items():
        if isinstance(module, nn.MultiheadAttention) and name.rsplit(".", 1)[-1] == "cross_attn":
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            found = (module, modules[parent])
    return found


@torch.no_grad()
def decoder_health(model: nn.Module, images: torch.Tensor,
                   label_states: torch.Tensor | None = None) -> dict[str, float] | None:
    """``attn_ratio`` and ``image_share`` (module doc) of ``model.head`` (or of ``model`` itself, a
    head fed with feature maps) on a batch, in eval mode; None if the head has no cross-attention
    or the batch has fewer than two images."""
    found = last_cross_attention(getattr(model, "head", model))
    if found is None or len(images) < 2:
        return None
    attention, layer = found
    seen: dict[str, torch.Tensor] = {}
    hooks = [attention.register_forward_hook(
                 lambda m, args, out: seen.update(query=args[0], attended=out[0])),
             layer.register_forward_hook(lambda m, args, out: seen.update(decoded=out))]
    was_training = model.training
    model.eval()
    try:
        model(images) if label_states is None else model(images, label_states)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return health_measures(seen["query"], seen["attended"], seen["decoded"])


def health_measures(query: torch.Tensor, attended: torch.Tensor, decoded: torch.Tensor
                    ) -> dict[str, Any]:
    """The two measures from tensors of shape (B, K, E): the queries going into the cross-attention,
    its output, and the decoder layer's output."""
    query, attended, decoded = query.double(), attended.double(), decoded.double()
    ratio = attended.norm(dim=-1).mean() / query.norm(dim=-1).mean().clamp_min(1e-12)
    varying = (decoded - decoded.mean(dim=0, keepdim=True)).pow(2).sum()
    share = varying / decoded.pow(2).sum().clamp_min(1e-300)
    return {"attn_ratio": float(ratio), "image_share": float(share)}
