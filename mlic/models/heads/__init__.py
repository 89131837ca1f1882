"""Classification heads, selectable by name (``model.head``).

A head is an ``nn.Module`` built as ``Head(in_features, num_classes, **head_params)`` that maps a
backbone feature map (B, D, H, W) to logits (B, C). Register a new one with ``@register_head``.
"""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from mlic.errors import ConfigError

HEADS: dict[str, type[nn.Module]] = {}


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        HEADS[name] = cls
        return cls
    return add


def build_head(name: str, in_features: int, num_classes: int, label_context=None,
               **params) -> nn.Module:
    """Build head ``name``; ``label_context`` goes only to heads that take one (label graphs)."""
    if name not in HEADS:
        raise ConfigError(f"model.head: unknown head {name!r}; available: {', '.join(sorted(HEADS))}")
    cls = HEADS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "in_features",
                                                                   "num_classes", "label_context"}
    unknown = set(params) - accepted
    if unknown:
        raise ConfigError(f"model.head_params: {sorted(unknown)} not accepted by head {name!r}; "
                          f"it takes {sorted(accepted)}")
    if head_uses_label_context(name):
        params["label_context"] = label_context
    return cls(in_features, num_classes, **params)


def head_uses_label_context(name: str) -> bool:
    return name in HEADS and "label_context" in inspect.signature(HEADS[name].__init__).parameters


from mlic.models.heads import linear  # noqa: E402,F401  (registers itself)
from mlic.models.heads import ml_decoder, query2label  # noqa: E402,F401  (register themselves)
from mlic.models.heads import label_graph, ml_gcn  # noqa: E402,F401  (register themselves)
from mlic.models.heads import ctran  # noqa: E402,F401  (registers itself)
