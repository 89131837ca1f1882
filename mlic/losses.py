"""Multi-label losses that ignore unknown labels: binary cross-entropy and ASL.

Every loss is called as ``loss(logits, targets)`` with two (B, C) tensors. Targets are 1 (positive),
0 (negative) or -1 (unknown, e.g. VOC "difficult" or an unverified OpenImages label); unknown entries
add nothing to the loss and receive no gradient. The losses compute in float32 whatever the logits'
dtype, because the log and power terms lose too much in fp16/bf16 under mixed precision.

Reductions: ``"sum"`` adds over the known entries; ``"mean"`` divides that sum by the number of known
entries (not by B*C, so a batch with many unknowns is not down-weighted). A batch with no known entry
gives a zero loss that is still part of the graph, so ``backward()`` works and yields zero gradients.

Losses are looked up by name with :func:`build_loss`; a new loss is one ``@register_loss("name")``.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlic.errors import ConfigError, DataError

REDUCTIONS = ("sum", "mean")

#: Loss name -> loss class. Filled by :func:`register_loss`.
LOSSES: dict[str, type[nn.Module]] = {}

_L = TypeVar("_L", bound=type[nn.Module])


def register_loss(name: str) -> Callable[[_L], _L]:
    """Class decorator that makes a loss available to :func:`build_loss` under ``name``."""

    def add(cls: _L) -> _L:
        if name in LOSSES:  # two losses under one name is a bug in mlic, not a user error
            raise ValueError(f"loss {name!r} is already registered to {LOSSES[name].__name__}")
        LOSSES[name] = cls
        return cls

    return add


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as ``name`` with keyword arguments checked against its parameters."""
    key = name.strip().lower()
    if key not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[key]
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(f"loss {key!r} has no parameter {', '.join(map(repr, unknown))}; "
                              f"valid parameters: {', '.join(params) or '(none)'}")
    return cls(**kwargs)


class MultiLabelLoss(nn.Module):
    """Base class: float32 cast, unknown-target masking and reduction.

    Subclasses implement :meth:`elementwise`, the per-entry loss for float32 logits and float targets
    in [0, 1]; the result at unknown entries is computed but discarded.
    """

    def __init__(self, reduction: str) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ConfigError(f"{type(self).__name__}: reduction must be one of "
                              f"{', '.join(REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.shape != targets.shape:
            raise DataError(f"{type(self).__name__}: logits have shape {tuple(logits.shape)} but "
                            f"targets have shape {tuple(targets.shape)}")
        x = logits.float()
        t = targets.to(device=x.device, dtype=torch.float32)
        known = t >= 0
        # where (not a multiply by the mask) so that nothing from an unknown entry, not even a NaN,
        # reaches the sum or the gradient.
        total = torch.where(known, self.elementwise(x, t.clamp(min=0)), 0.0).sum()
        if self.reduction == "mean":
            # clamp instead of a Python branch: no host sync, and 0 known entries give 0 / 1 = 0.
            total = total / known.sum().clamp(min=1)
        return total

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


@register_loss("bce")
class BinaryCrossEntropy(MultiLabelLoss):
    """Binary cross-entropy on logits, over the known entries.

    Args:
        reduction: ``"mean"`` (default, the usual BCE scale) or ``"sum"``.
        pos_weight: weight of the positive term, a scalar or one value per class (C,), as in
            ``torch.nn.BCEWithLogitsLoss``; ``None`` weights positives and negatives equally.
    """

    pos_weight: Tensor | None

    def __init__(self, reduction: str = "mean",
                 pos_weight: float | Sequence[float] | Tensor | None = None) -> None:
        super().__init__(reduction)
        weight = None
        if pos_weight is not None:
            weight = torch.as_tensor(pos_weight, dtype=torch.float32).detach().clone()
            if weight.ndim > 1 or not bool(torch.isfinite(weight).all()) or bool((weight <= 0).any()):
                raise ConfigError(f"BinaryCrossEntropy: pos_weight must be a positive number or a "
                                  f"1-D list of positive numbers (one per class), got {pos_weight!r}")
        # A buffer, so that .to(device) moves it with the module.
        self.register_buffer("pos_weight", weight)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight,
                                                  reduction="none")


@register_loss("asl")
class AsymmetricLoss(MultiLabelLoss):
    """Asymmetric loss (ASL, Ben-Baruch et al. 2021), with unknown targets ignored.

    With p = sigmoid(x), per entry:

    * shifted negative probability p_m = max(p - clip, 0), i.e. 1 - p_m = min(1 - p + clip, 1);
    * L+ = y * log max(p, eps),  L- = (1 - y) * log max(1 - p_m, eps);
    * when gamma_pos > 0 or gamma_neg > 0, focusing weight w = (1 - p)^gamma_pos for positives and
      p_m^gamma_neg for negatives (otherwise w = 1);
    * loss = -sum w * (L+ + L-).

    ``log max(p, eps)`` is computed as ``max(logsigmoid(x), log eps)``: equal, since log is monotone,
    but finite for any logit, whereas ``log(sigmoid(x))`` underflows to -inf in low precision. As in the
    reference, the clamps pass no gradient where they are active.

    Args:
        gamma_neg, gamma_pos: focusing exponents (>= 0). Defaults are the ASL training script's (4, 0).
        clip: probability shift of the negatives, in [0, 1); 0 or ``None`` disables it.
        eps: floor of the probabilities inside the logs.
        detach_focal_weight: compute w without autograd, so the gradient is w * d(log term)/dx, as ASL's
            ``disable_torch_grad_focal_loss=True`` (default). False gives the full focal derivative.
        reduction: ``"sum"`` (default, as ASL/ML-Decoder/DOR train with) or ``"mean"``.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float | None = 0.05,
                 eps: float = 1e-8, detach_focal_weight: bool = True, reduction: str = "sum") -> None:
        super().__init__(reduction)
        clip = 0.0 if clip is None else float(clip)
        if not (gamma_neg >= 0 and gamma_pos >= 0):
            raise ConfigError(f"AsymmetricLoss: gamma_neg and gamma_pos must be >= 0, "
                              f"got {gamma_neg} and {gamma_pos}")
        if not 0 <= clip < 1:
            raise ConfigError(f"AsymmetricLoss: clip must be in [0, 1) or None, got {clip}")
        if not 0 < eps < 1:
            raise ConfigError(f"AsymmetricLoss: eps must be in (0, 1), got {eps}")
        self.gamma_neg, self.gamma_pos = float(gamma_neg), float(gamma_pos)
        self.clip, self.eps = clip, float(eps)
        self.detach_focal_weight = bool(detach_focal_weight)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_eps = math.log(self.eps)
        log_pos = F.logsigmoid(logits).clamp(min=log_eps)
        if self.clip > 0:
            # 1 - p_m >= clip > 0, so a plain log is finite here.
            log_neg = torch.log((torch.sigmoid(-logits) + self.clip).clamp(max=1.0))
        else:
            log_neg = F.logsigmoid(-logits)
        loss = targets * log_pos + (1 - targets) * log_neg.clamp(min=log_eps)
        if self.gamma_pos > 0 or self.gamma_neg > 0:
            no_grad = torch.no_grad() if self.detach_focal_weight else contextlib.nullcontext()
            with no_grad:
                w = targets * self._positive_weight(logits) + (1 - targets) * self._negative_weight(logits)
            loss = loss * w
        return -loss

    def _positive_weight(self, x: Tensor) -> Tensor:
        # (1 - p)^g as exp(g * logsigmoid(-x)): no 0^g for very large logits, so a finite gradient
        # when the weight is not detached.
        if self.gamma_pos == 0:
            return torch.ones_like(x)
        return torch.exp(self.gamma_pos * F.logsigmoid(-x))

    def _negative_weight(self, x: Tensor) -> Tensor:
        if self.gamma_neg == 0:
            return torch.ones_like(x)
        if self.clip == 0:
            return torch.exp(self.gamma_neg * F.logsigmoid(x))
        p_m = torch.sigmoid(x) - self.clip
        shifted = p_m > 0
        # p_m^g is 0 where the shift hits zero; the inner where keeps pow away from bases <= 0, whose
        # derivative is inf/NaN for g < 1 and would leak through the outer where's backward as NaN.
        return torch.where(shifted, torch.where(shifted, p_m, 1.0).pow(self.gamma_neg), 0.0)

    def extra_repr(self) -> str:
        return (f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
                f"eps={self.eps}, detach_focal_weight={self.detach_focal_weight}, "
                f"reduction={self.reduction!r}")
