"""The head registry: each head's name, class and the parameters it takes (``model.head_params``).

A head registers itself with ``@register_head("name")``. Its parameters (names and defaults) are
read once, here, from its constructor, so the config check, the trainer and ``mlic tune`` ask the
registry (``head_spec(name).params``, ``.takes_label_context``, ``.takes("pooling")``) instead of
each inspecting the class again. ``in_features``, ``num_classes`` and ``label_context`` are not
head parameters: the model supplies them.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from mlic.errors import ConfigError, did_you_mean

SUPPLIED = ("self", "in_features", "num_classes", "label_context")


@dataclass(frozen=True)
class HeadSpec:
    name: str
    cls: type[nn.Module]
    params: Mapping[str, Any]   # head parameter -> its default (inspect.Parameter.empty: required)
    takes_label_context: bool   # label statistics and embeddings (the label-graph heads)

    def takes(self, param: str) -> bool:
        return param in self.params


#: Head name -> its class (``HEAD_SPECS`` holds what each takes).
HEADS: dict[str, type[nn.Module]] = {}
HEAD_SPECS: dict[str, HeadSpec] = {}


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in HEADS:  # two heads under one name is a bug in mlic, not a user error
            raise ValueError(f"head {name!r} is already registered to {HEADS[name].__name__}")
        signature = inspect.signature(cls.__init__).parameters
        HEADS[name] = cls
        HEAD_SPECS[name] = HeadSpec(name, cls, {k: p.default for k, p in signature.items()
                                                if k not in SUPPLIED},
                                    "label_context" in signature)
        return cls
    return add


def head_spec(name: str) -> HeadSpec:
    if name not in HEAD_SPECS:
        raise ConfigError(f"'model.head': unknown head {name!r}{did_you_mean(name, HEAD_SPECS)}; "
                          f"available: {', '.join(sorted(HEAD_SPECS))}")
    return HEAD_SPECS[name]


def build_head(name: str, in_features: int, num_classes: int, label_context=None,
               **params) -> nn.Module:
    """Build head ``name``; ``label_context`` goes only to heads that take one (label graphs)."""
    spec = head_spec(name)
    unknown = set(params) - set(spec.params)
    if unknown:
        raise ConfigError(f"model.head_params: {sorted(unknown)} not accepted by head {name!r}; "
                          f"it takes {sorted(spec.params)}")
    if spec.takes_label_context:
        params["label_context"] = label_context
    return spec.cls(in_features, num_classes, **params)


def head_uses_label_context(name: str) -> bool:
    return name in HEAD_SPECS and HEAD_SPECS[name].takes_label_context
