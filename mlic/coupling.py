"""A loss and a head, coupled once: what the loss needs from the head, and the head's scale.

A loss that ``takes_cosine_logits`` (AM, AAM: ``mlic.losses``) puts its margin in cosine units, so
the head must give logits s * cos and the loss must know the same s. Before the model is built,
``head_params_for_loss`` switches the head's cosine form on (when the head has one and the config
does not say otherwise, as the paper's code does) and gives it ``loss.params.scale`` when set;
after, ``build_coupled_loss`` builds the loss with the built head's s. A head without cosine
logits, or two different scales, is refused with one line that says what to set.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from mlic.errors import ConfigError
from mlic.losses import build_loss, takes_cosine_logits
from mlic.models.heads import head_spec
from mlic.models.heads.cosine import cosine_scale


def head_params_for_loss(loss: str, loss_params: Mapping[str, Any], head: str,
                         head_params: Mapping[str, Any]) -> dict[str, Any]:
    """``head_params`` with what the loss needs of the head added (never overriding the config)."""
    params = dict(head_params)
    if not takes_cosine_logits(loss):
        return params
    if "cosine" not in params and head_spec(head).takes("cosine"):
        params["cosine"] = True
    if "scale" in loss_params:
        params.setdefault("scale", loss_params["scale"])
        if isinstance(params.get("decoder"), dict):  # a label graph feeding an ML-Decoder
            params["decoder"] = {"scale": loss_params["scale"], **params["decoder"]}
    return params


def build_coupled_loss(loss: str, loss_params: Mapping[str, Any], head: nn.Module,
                       head_name: str) -> nn.Module:
    """The loss, with the scale s of ``head`` when it works on cosine logits."""
    loss_fn = build_loss(loss, **loss_params)
    if not getattr(loss_fn, "takes_cosine_logits", False):
        return loss_fn
    scale = cosine_scale(head)
    if scale is None:
        raise ConfigError(f"loss '{loss}' works on cosine logits: set "
                          f"model.head_params.cosine=true (head '{head_name}')")
    if "scale" in loss_params and float(loss_params["scale"]) != scale:
        raise ConfigError(f"loss.params.scale ({loss_params['scale']}) differs from the head's "
                          f"scale ({scale}); set one of them (loss.params.scale sets both)")
    loss_fn.scale = scale
    return loss_fn
