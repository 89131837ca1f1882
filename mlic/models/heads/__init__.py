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


def build_head(name: str, in_features: int, num_classes: int, **params) -> nn.Module:
    if name not in HEADS:
        raise ConfigError(f"model.head: unknown head {name!r}; available: {', '.join(sorted(HEADS))}")
    cls = HEADS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "in_features", "num_classes"}
    unknown = set(params) - accepted
    if unknown:
        raise ConfigError(f"model.head_params: {sorted(unknown)} not accepted by head {name!r}; "
                          f"it takes {sorted(accepted)}")
    return cls(in_features, num_classes, **params)


from mlic.models.heads import linear  # noqa: E402,F401  (registers itself)
