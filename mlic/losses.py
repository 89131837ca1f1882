"""Multi-label losses that ignore unknown labels: binary cross-entropy, ASL and the AM/AAM angular-margin
losses of the paper (for cosine heads; docs/losses.md compares them).

Every loss is called as ``loss(logits, targets)`` with two (B, C) tensors. Targets are 1 (positive),
0 (negative) or -1 (unknown, e.g. VOC "difficult" or an unverified OpenImages label); unknown entries
add nothing to the loss and receive no gradient. The losses compute in float32 whatever the logits'
dtype, because the log and power terms lose too much in fp16/bf16 under mixed precision.

Reductions: ``"sum"`` adds over the known entries; ``"mean"`` divides that sum by the number of known
entries (not by B*C, so a batch with many unknowns is not down-weighted). A batch with no known entry
gives a zero loss that is still part of the graph, so ``backward()`` works and yields zero gradients.

Losses are looked up by name with :func:`build_loss`; a new loss is one ``@register_loss("name")``.
A loss says what it needs from the head: ``takes_cosine_logits`` (AM/AAM) means logits s * cos
and the head's scale s; ``mlic.coupling`` gives it both.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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


def takes_cosine_logits(name: str) -> bool:
    """Whether the loss registered as ``name`` works on a cosine head's logits (AM, AAM)."""
    cls = LOSSES.get(name.strip().lower())
    return cls is not None and cls.takes_cosine_logits


class MultiLabelLoss(nn.Module):
    """Base class: float32 cast, unknown-target masking and reduction.

    Subclasses implement :meth:`elementwise`, the per-entry loss for float32 logits and float targets
    in [0, 1]; the result at unknown entries is computed but discarded.
    """

    #: True: the logits must be s * cos from a cosine head, and the loss has a ``scale`` s to match.
    takes_cosine_logits: bool = False

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


def _check_number(owner: str, name: str, value: Any, low: float, high: float = math.inf,
                  low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within the interval, else a ConfigError that names the interval."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    ok = (math.isfinite(number) and (number > low if low_open else number >= low)
          and (number < high if high_open else number <= high))
    if not ok:
        if high == math.inf:
            interval = f"{'>' if low_open else '>='} {low:g}"
        else:
            interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{owner}: {name} must be {interval}, got {value!r}")
    return number


@register_loss("am")
class AngularMarginLoss(MultiLabelLoss):
    """Binary angular-margin loss (AM) of the paper, with optional asymmetric focusing (AAM).

    Input convention: mlic's cosine heads output the final logit ``x = s * z`` where z is the cosine
    (plus the per-class bias of the ML-Decoder head, so |z| may exceed 1) and s the head's ``scale``.
    The loss receives x and must know the same s (``scale``; ``mlic.coupling`` copies the head's scale
    into it) to put the margin in cosine units and to apply the 1/s balancing. Per known entry, with
    a = s(z - m) = x - s*m and b = s(z + m) = x + s*m:

    * p+ = sigmoid(a),  p- = sigmoid(-b)  (the margin is taken off positives and added to negatives);
    * focusing on (gamma_pos > 0 or gamma_neg > 0): p- <- min(p- + clip, 1), and the weights are
      w+ = (shifted p-)^gamma_pos for the positive term and w- = (unshifted p+)^gamma_neg for the
      negative term; focusing off: no shift (unless ``always_clip``) and w+ = w- = 1;
    * loss = -[ w+ * (k/s) * y * log p+  +  w- * ((1-k)/s) * (1-y) * log p- ].

    For 0/1 targets this is the released DOR ``AMBinaryLoss`` (``torchreid/losses/asl.py``). Soft
    targets (label smoothing, mixup) keep each branch's own weight. Inference is sigmoid(x) =
    sigmoid(s*z): margin, shift and k are training-only.

    Numerics: computed in float32 from log-sigmoids (softplus), never as log(sigmoid(.)), so fp16
    logits with s = 23 and |z| near 1 give a finite loss; the reference computes log of an fp16
    sigmoid under autocast and gets log(0) = -inf there. The shifted log, log(min(sigmoid(-b) + clip,
    1)), is >= log(clip) > -inf. No eps floor is needed, so there is none.

    Parameter sets (docs/losses.md, "Which parameters reproduce what"):

    * released DOR recipe: ``build_loss("am")`` = scale 23 (COCO; 17 for VOC), margin 0, k 0.7,
      gammas 0 -> (1/s) * [k * BCE(x) on positives + (1-k) * BCE(x) on negatives], summed;
    * paper's formula: any margin/gamma_pos/gamma_neg; ``build_loss("aam")`` presets the asymmetric
      focusing gamma_neg = 1, gamma_pos = 0, clip 0.05 (see :class:`AsymmetricAngularMarginLoss`);
    * OTX production: scale 7 (head), margin 0, k 0.8, gamma_pos 0, gamma_neg 1, clip 0.05,
      ``always_clip=True`` (OTX shifts p- even without focusing).

    Args:
        scale: s, the head's scale (> 0). Settable later (``loss.scale = head.scale``).
        margin: m in cosine units, in [0, 1).
        k: weight of positives vs negatives, in [0, 1] (the SphereFace2 balance).
        gamma_pos, gamma_neg: focusing exponents (>= 0).
        clip: shift of the negative probability, in [0, 1); 0 or ``None`` disables it. Used only when
            focusing is on, as the reference, unless ``always_clip``.
        always_clip: shift p- also when both gammas are 0 (OTX's form).
        label_smoothing: eps in [0, 1): y <- y * (1 - eps), then entries equal to 0 become eps.
        detach_focal_weight: compute w without autograd. Default False, as the reference, whose
            gradient also flows through the weights.
        reduction: ``"sum"`` (default, as the reference) or ``"mean"`` over the known entries.
    """

    takes_cosine_logits = True

    def __init__(self, scale: float = 23.0, margin: float = 0.0, k: float = 0.7,
                 gamma_pos: float = 0.0, gamma_neg: float = 0.0, clip: float | None = 0.05,
                 always_clip: bool = False, label_smoothing: float = 0.0,
                 detach_focal_weight: bool = False, reduction: str = "sum") -> None:
        super().__init__(reduction)
        name = type(self).__name__
        self.scale = scale  # validated by the setter
        self.margin = _check_number(name, "margin", margin, 0.0, 1.0, high_open=True)
        self.k = _check_number(name, "k", k, 0.0, 1.0)
        self.gamma_pos = _check_number(name, "gamma_pos", gamma_pos, 0.0)
        self.gamma_neg = _check_number(name, "gamma_neg", gamma_neg, 0.0)
        self.clip = _check_number(name, "clip", 0.0 if clip is None else clip, 0.0, 1.0, high_open=True)
        self.label_smoothing = _check_number(name, "label_smoothing", label_smoothing, 0.0, 1.0,
                                             high_open=True)
        self.always_clip = bool(always_clip)
        self.detach_focal_weight = bool(detach_focal_weight)

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = _check_number(type(self).__name__, "scale", value, 0.0, low_open=True)

    @property
    def focusing(self) -> bool:
        return self.gamma_pos > 0 or self.gamma_neg > 0

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        s, shift = self.scale, self.margin * self.scale
        y = targets
        if self.label_smoothing > 0:
            y = y * (1 - self.label_smoothing)
            y = torch.where(y == 0, self.label_smoothing, y)
        log_pos = F.logsigmoid(logits - shift)  # log p+ = log sigmoid(s(z - m))
        neg_arg = -(logits + shift)             # -s(z + m)
        clip = self.clip if (self.focusing or self.always_clip) else 0.0
        if clip > 0:
            log_neg = torch.log((torch.sigmoid(neg_arg) + clip).clamp(max=1.0))  # >= log(clip)
        else:
            log_neg = F.logsigmoid(neg_arg)
        pos = (self.k / s) * y * log_pos
        neg = ((1 - self.k) / s) * (1 - y) * log_neg
        if self.focusing:
            no_grad = torch.no_grad() if self.detach_focal_weight else contextlib.nullcontext()
            with no_grad:
                # powers as exp(gamma * log): no 0^gamma, so finite gradients for any gamma >= 0.
                w_pos = torch.exp(self.gamma_pos * log_neg) if self.gamma_pos > 0 else None
                w_neg = torch.exp(self.gamma_neg * log_pos) if self.gamma_neg > 0 else None
            if w_pos is not None:
                pos = pos * w_pos
            if w_neg is not None:
                neg = neg * w_neg
        return -(pos + neg)

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, margin={self.margin}, k={self.k}, gamma_pos={self.gamma_pos}, "
                f"gamma_neg={self.gamma_neg}, clip={self.clip}, always_clip={self.always_clip}, "
                f"label_smoothing={self.label_smoothing}, "
                f"detach_focal_weight={self.detach_focal_weight}, reduction={self.reduction!r}")


@register_loss("aam")
class AsymmetricAngularMarginLoss(AngularMarginLoss):
    """:class:`AngularMarginLoss` with asymmetric focusing on by default (``build_loss("aam")``).

    Defaults: gamma_neg = 1, gamma_pos = 0, clip = 0.05, margin = 0, k = 0.7, scale = 23. The
    focusing values are those of OTX's production configs (the only non-zero gammas in the authors'
    released code lineage; DOR's own recipes train with gamma = 0, i.e. ``"am"``); the clip is DOR's
    hard-coded 0.05; k and scale are the released COCO recipe's. The margin stays 0 as in every
    released recipe; the paper's form with a margin is ``margin=...`` (older DOR configs used
    0.01-0.037 at s = 20). All parameters are those of :class:`AngularMarginLoss`.
    """

    def __init__(self, scale: float = 23.0, margin: float = 0.0, k: float = 0.7,
                 gamma_pos: float = 0.0, gamma_neg: float = 1.0, clip: float | None = 0.05,
                 always_clip: bool = False, label_smoothing: float = 0.0,
                 detach_focal_weight: bool = False, reduction: str = "sum") -> None:
        super().__init__(scale=scale, margin=margin, k=k, gamma_pos=gamma_pos, gamma_neg=gamma_neg,
                         clip=clip, always_clip=always_clip, label_smoothing=label_smoothing,
                         detach_focal_weight=detach_focal_weight, reduction=reduction)
