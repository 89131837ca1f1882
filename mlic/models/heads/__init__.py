"""Classification heads, selectable by name (``model.head``).

A head is an ``nn.Module`` built as ``Head(in_features, num_classes, **head_params)`` that maps a
backbone feature map (B, D, H, W) to logits (B, C). Register a new one with ``@register_head``
(``registry.py``); importing this package registers mlic's own.
"""
from mlic.models.heads.registry import (HEAD_SPECS, HEADS, HeadSpec, build_head, head_spec,
                                        head_uses_label_context, register_head)
# Each registers itself on import.
from mlic.models.heads import linear, ml_decoder, query2label  # noqa: F401
from mlic.models.heads import label_graph, ml_gcn, ctran  # noqa: F401

__all__ = ["HEADS", "HEAD_SPECS", "HeadSpec", "build_head", "head_spec", "head_uses_label_context",
           "register_head"]
