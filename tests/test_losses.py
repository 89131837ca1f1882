"""Losses against an independent float64 re-derivation of their formulas (docs/losses.md; reference code:
openvinotoolkit/deep-object-reid branch multilabel ``torchreid/losses/asl.py``, Alibaba-MIIL/ASL
``src/loss_functions/losses.py``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlic.errors import ConfigError, DataError, MlicError
from mlic.losses import (
    LOSSES,
    AngularMarginLoss,
    AsymmetricAngularMarginLoss,
    AsymmetricLoss,
    BinaryCrossEntropy,
    build_loss,
)


def make_batch(seed: int, shape=(6, 7), scale=5.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    x[0, :4] = torch.tensor([30.0, -30.0, 25.0, -25.0], dtype=torch.float64)  # large magnitudes
    x[1, :4] = torch.tensor([-30.0, 30.0, -25.0, 25.0], dtype=torch.float64)
    t = torch.randint(-1, 2, shape, generator=g)
    t[0, :4] = torch.tensor([1, 1, 0, 0])
    t[1, :4] = torch.tensor([1, 1, 0, 0])
    return x, t


def asl_reference(x: np.ndarray, t: np.ndarray, gamma_neg, gamma_pos, clip, eps, reduction):
    """Per-element ASL in float64, straight from the formulas, unknown targets skipped."""
    total, count = 0.0, 0
    for xi, yi in zip(x.ravel(), t.ravel()):
        if yi < 0:
            continue
        p = 1.0 / (1.0 + math.exp(-xi))
        q = min(1.0 - p + clip, 1.0)  # 1 - p_m
        lp = math.log(max(p, eps)) if yi == 1 else 0.0
        ln = math.log(max(q, eps)) if yi == 0 else 0.0
        w = 1.0
        if gamma_pos > 0 or gamma_neg > 0:
            w = (1.0 - p) ** gamma_pos if yi == 1 else (1.0 - q) ** gamma_neg
        total += -w * (lp + ln)
        count += 1
    return total / max(count, 1) if reduction == "mean" else total


ASL_CASES = [  # gamma_neg, gamma_pos, clip
    (4.0, 0.0, 0.05),   # ASL training recipe
    (4.0, 1.0, 0.05),   # ASL class defaults
    (2.0, 0.0, 0.0),    # Q2L, no clip
    (0.0, 0.0, 0.05),   # clip only, no focusing
    (0.0, 0.0, None),   # plain BCE with an eps floor
    (0.5, 0.5, 0.1),    # fractional exponents
]


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", ASL_CASES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_asl_matches_float64_formula(gamma_neg, gamma_pos, clip, reduction, seed):
    x, t = make_batch(seed)
    loss = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction=reduction)
    got = loss(x.float(), t)
    assert got.dtype == torch.float32
    want = asl_reference(x.numpy(), t.numpy(), gamma_neg, gamma_pos, clip or 0.0, 1e-8, reduction)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_asl_float_targets_and_default_reduction_is_sum():
    x, t = make_batch(3)
    a = AsymmetricLoss()(x.float(), t.float())
    b = AsymmetricLoss(reduction="sum")(x.float(), t)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def asl_analytic_grad_detached(x: np.ndarray, t: np.ndarray, gamma_neg, gamma_pos, clip, eps):
    """d loss / dx with the focal weight held constant: -w * d(log term)/dx, by hand, in float64."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xi, yi = x[idx], t[idx]
        if yi < 0:
            continue
        p = 1.0 / (1.0 + math.exp(-xi))
        if yi == 1:
            w = (1.0 - p) ** gamma_pos
            dlog = (1.0 - p) if p > eps else 0.0  # d log p / dx; 0 where the eps floor is active
        else:
            q = min(1.0 - p + clip, 1.0)
            w = (1.0 - q) ** gamma_neg
            # d log(1 - p + clip)/dx = -p(1 - p) / (1 - p + clip); 0 where the min(., 1) or eps is active
            dlog = -p * (1.0 - p) / (1.0 - p + clip) if (1.0 - p + clip < 1.0 and q > eps) else 0.0
        g[idx] = -w * dlog
    return g


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4.0, 0.0, 0.05), (4.0, 1.0, 0.05), (2.0, 1.0, 0.0)])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_asl_detached_gradient_is_weight_times_log_derivative(gamma_neg, gamma_pos, clip, reduction):
    x, t = make_batch(5)
    x32 = x.float().requires_grad_()
    AsymmetricLoss(gamma_neg, gamma_pos, clip, reduction=reduction)(x32, t).backward()
    want = asl_analytic_grad_detached(x.numpy(), t.numpy(), gamma_neg, gamma_pos, clip, 1e-8)
    if reduction == "mean":
        want /= (t >= 0).sum().item()
    np.testing.assert_allclose(x32.grad.double().numpy(), want, rtol=1e-4, atol=1e-7)
    assert (x32.grad[t < 0] == 0).all()


def asl_torch64(x: torch.Tensor, t: torch.Tensor, gamma_neg, gamma_pos, clip, eps, detach):
    """ASL written naively in float64 torch, for autograd's full derivative."""
    y = t.clamp(min=0).double()
    p = torch.sigmoid(x)
    q = (1 - p + clip).clamp(max=1)
    base = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(q.clamp(min=eps))
    w = y * (1 - p) ** gamma_pos + (1 - y) * (1 - q) ** gamma_neg
    if detach:
        w = w.detach()
    return -(torch.where(t >= 0, w * base, 0.0)).sum()


@pytest.mark.parametrize("detach", [True, False])
def test_asl_gradient_matches_float64_autograd(detach):
    x, t = make_batch(7, scale=3.0)
    x64 = x.clone().requires_grad_()
    asl_torch64(x64, t, 4.0, 1.0, 0.05, 1e-8, detach).backward()
    x32 = x.float().requires_grad_()
    AsymmetricLoss(4.0, 1.0, 0.05, detach_focal_weight=detach)(x32, t).backward()
    np.testing.assert_allclose(x32.grad.double().numpy(), x64.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_detached_and_full_focal_gradients_differ():
    x, t = make_batch(8, scale=2.0)
    grads = []
    for detach in (True, False):
        xx = x.float().requires_grad_()
        AsymmetricLoss(detach_focal_weight=detach)(xx, t).backward()
        grads.append(xx.grad)
    assert not torch.allclose(grads[0], grads[1])
    # same forward value though
    a = AsymmetricLoss(detach_focal_weight=True)(x.float(), t)
    b = AsymmetricLoss(detach_focal_weight=False)(x.float(), t)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_asl_full_gradient_finite_at_fractional_gamma_and_huge_logits():
    x = torch.tensor([[-200.0, 200.0, 0.01, -0.01, 90.0, -90.0]], requires_grad=True)
    t = torch.tensor([[0, 1, 0, 1, 0, 1]])
    loss = AsymmetricLoss(gamma_neg=0.5, gamma_pos=0.5, clip=0.05, detach_focal_weight=False)(x, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["asl", "bce"])
def test_low_precision_logits_give_finite_float32_loss(dtype, name):
    x, t = make_batch(9, scale=20.0)
    xl = x.to(dtype).requires_grad_()
    loss = build_loss(name)(xl, t)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = build_loss(name)(x.float(), t)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("name", ["asl", "bce"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_all_unknown_targets_give_zero_loss_with_grad(name, reduction):
    x = torch.randn(3, 4, requires_grad=True)
    loss = build_loss(name, reduction=reduction)(x, torch.full((3, 4), -1))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert (x.grad == 0).all()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("pos_weight", [None, 2.5, [0.5, 1.0, 2.0, 3.0, 1.5, 1.0, 4.0]])
def test_bce_matches_torch_on_known_entries(reduction, pos_weight):
    x, t = make_batch(11)
    x = x.float()
    known = t >= 0
    # torch's own BCE on the full matrix, then keep the known entries
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
    full = F.binary_cross_entropy_with_logits(x, t.clamp(min=0).float(), pos_weight=pw, reduction="none")
    want = full[known].sum()
    if reduction == "mean":
        want = want / known.sum()
    got = BinaryCrossEntropy(reduction=reduction, pos_weight=pos_weight)(x, t)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_bce_default_is_mean_and_pos_weight_moves_with_module():
    loss = BinaryCrossEntropy(pos_weight=[1.0, 2.0])
    assert loss.reduction == "mean"
    assert "pos_weight" in dict(loss.named_buffers())


def test_unknown_entries_do_not_change_the_loss():
    x, t = make_batch(12)
    x = x.float()
    changed = x.clone()
    changed[t < 0] = 1e4  # whatever an unknown entry holds, it must not matter
    for loss in (AsymmetricLoss(), BinaryCrossEntropy()):
        assert loss(x, t).item() == pytest.approx(loss(changed, t).item(), rel=1e-6)


def test_build_loss_registry_and_errors():
    assert {"bce", "asl"} <= set(LOSSES)
    asl = build_loss("asl", gamma_neg=2, clip=0)
    assert isinstance(asl, AsymmetricLoss) and asl.gamma_neg == 2 and asl.clip == 0
    assert isinstance(build_loss("BCE"), BinaryCrossEntropy)
    with pytest.raises(ConfigError, match=r"unknown loss 'focal'.*asl.*bce"):
        build_loss("focal")
    with pytest.raises(ConfigError, match=r"'asl'.*'gama_neg'.*gamma_neg"):
        build_loss("asl", gama_neg=2)
    with pytest.raises(ConfigError, match="reduction"):
        build_loss("bce", reduction="none")
    with pytest.raises(ConfigError):
        AsymmetricLoss(clip=1.5)
    with pytest.raises(ConfigError):
        AsymmetricLoss(gamma_neg=-1)
    with pytest.raises(ConfigError):
        BinaryCrossEntropy(pos_weight=[1.0, -2.0])
    assert issubclass(ConfigError, MlicError)


def test_shape_mismatch_is_an_error():
    with pytest.raises(DataError, match="shape"):
        AsymmetricLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------------
# AM / AAM (deep-object-reid's ``AMBinaryLoss``, torchreid/losses/asl.py; docs/losses.md).
# The loss gets logits x = s * z; the references get z = x / s.


def cosine_batch(seed: int, s: float, shape=(8, 10)):
    """float32 logits x = s * z with z uniform in [-1.2, 1.2] (ML-Decoder's bias lets |z| > 1),
    targets in {1, 0, -1}, and z recovered exactly from the float32 x, in float64."""
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(shape, generator=g, dtype=torch.float64) * 2.4 - 1.2
    z[0, :4] = torch.tensor([1.0, -1.0, 1.2, -1.2], dtype=torch.float64)
    t = torch.randint(-1, 2, shape, generator=g)
    t[0, :4] = torch.tensor([0, 1, 0, 1])  # confident mistakes: log terms near log sigmoid(-s)
    x = (s * z).float()
    return x, t, x.double() / s


def am_reference(z: np.ndarray, t: np.ndarray, s, m, k, gamma_pos, gamma_neg, clip, reduction,
                 label_smoothing=0.0, always_clip=False):
    """AM/AAM per element in float64, from the formula in docs/losses.md (deep-object-reid's
    ``AMBinaryLoss``), unknown targets skipped."""
    def sig(v):  # |v| <= 40 here: no overflow
        return 1.0 / (1.0 + math.exp(-v))

    focusing = gamma_pos > 0 or gamma_neg > 0
    total, count = 0.0, 0
    for zi, ti in zip(z.ravel(), t.ravel()):
        if ti < 0:
            continue
        y = float(ti)
        if label_smoothing:
            y = y * (1 - label_smoothing)
            y = label_smoothing if y == 0 else y
        p_pos = sig(s * (zi - m))
        p_neg = sig(-s * (zi + m))
        if focusing or always_clip:
            p_neg = min(p_neg + clip, 1.0)
        w_pos = p_neg ** gamma_pos if focusing else 1.0   # shifted p- at z + m
        w_neg = p_pos ** gamma_neg if focusing else 1.0   # unshifted p+ at z - m
        total += -(w_pos * (k / s) * y * math.log(p_pos)
                   + w_neg * ((1 - k) / s) * (1 - y) * math.log(p_neg))
        count += 1
    return total / max(count, 1) if reduction == "mean" else total


def am_torch64(x: torch.Tensor, t: torch.Tensor, s, m, k, gamma_pos, gamma_neg, clip,
               reduction="sum", detach=False):
    """The same formula written naively in float64 torch (log of sigmoid), for autograd."""
    z = x / s
    y = t.clamp(min=0).double()
    p_pos = torch.sigmoid(s * (z - m))
    p_neg = torch.sigmoid(-s * (z + m))
    focusing = gamma_pos > 0 or gamma_neg > 0
    if focusing:
        p_neg = (p_neg + clip).clamp(max=1.0)
        w_pos, w_neg = p_neg ** gamma_pos, p_pos ** gamma_neg
        if detach:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
    else:
        w_pos = w_neg = torch.ones_like(z)
    per = -(w_pos * (k / s) * y * torch.log(p_pos) + w_neg * ((1 - k) / s) * (1 - y) * torch.log(p_neg))
    total = torch.where(t >= 0, per, 0.0).sum()
    return total / (t >= 0).sum() if reduction == "mean" else total


AM_CASES = [  # scale, margin, k, gamma_pos, gamma_neg, clip
    (23.0, 0.0, 0.7, 0.0, 0.0, 0.05),   # released recipe (COCO): weighted BCE / s
    (17.0, 0.0, 0.7, 0.0, 0.0, 0.05),   # released recipe (VOC)
    (23.0, 0.2, 0.7, 0.0, 0.0, 0.05),   # margin, no focusing (clip inactive)
    (20.0, 0.035, 0.8, 1.0, 0.0, 0.05),  # gamma_pos only: shift active, w+ = shifted p-
    (23.0, 0.1, 0.7, 0.0, 2.0, 0.05),   # gamma_neg only
    (23.0, 0.1, 0.6, 0.5, 1.0, 0.1),    # both, fractional exponent
    (7.0, 0.0, 0.8, 0.0, 1.0, 0.05),    # OTX production values (OTX always clips; here not)
    (23.0, 0.1, 0.7, 1.0, 1.0, 0.0),    # focusing without a shift
    (23.0, 0.1, 1.0, 1.0, 2.0, 0.05),   # k = 1: positives only
    (23.0, 0.1, 0.0, 1.0, 2.0, 0.05),   # k = 0: negatives only
    (5.0, 0.3, 0.5, 2.0, 4.0, 0.05),    # small scale, large margin
]


@pytest.mark.parametrize("s,m,k,gamma_pos,gamma_neg,clip", AM_CASES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_am_matches_float64_formula(s, m, k, gamma_pos, gamma_neg, clip, reduction):
    x, t, z = cosine_batch(int(s * 10 + m * 100), s)
    loss = AngularMarginLoss(scale=s, margin=m, k=k, gamma_pos=gamma_pos, gamma_neg=gamma_neg,
                             clip=clip, reduction=reduction)
    got = loss(x, t)
    assert got.dtype == torch.float32
    want = am_reference(z.numpy(), t.numpy(), s, m, k, gamma_pos, gamma_neg, clip, reduction)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    # the torch float64 re-derivation used for gradients agrees with the per-element loop
    ref64 = am_torch64(x.double(), t, s, m, k, gamma_pos, gamma_neg, clip, reduction)
    assert ref64.item() == pytest.approx(want, rel=1e-10)


def test_am_shift_branch_is_exercised():
    """The min(p- + clip, 1) clamp is active on some entries of the test batches and not on others."""
    s, m, clip = 20.0, 0.035, 0.05
    _, _, z = cosine_batch(int(s * 10 + m * 100), s)
    p_neg = torch.sigmoid(-s * (z + m))
    assert bool((p_neg + clip > 1).any()) and bool((p_neg + clip < 1).any())


@pytest.mark.parametrize("s,k", [(23.0, 0.7), (17.0, 0.7), (10.0, 0.5), (23.0, 0.9)])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_am_released_recipe_is_weighted_bce_over_s(s, k, reduction):
    """m = 0, gamma = 0: (1/s) [k BCE on positives + (1 - k) BCE on negatives] of x = s cos."""
    x, t, _ = cosine_batch(3, s)
    known = t >= 0
    bce = F.binary_cross_entropy_with_logits(x, t.clamp(min=0).float(), reduction="none")
    want = (k * bce[t == 1].sum() + (1 - k) * bce[t == 0].sum()) / s
    if reduction == "mean":
        want = want / known.sum()
    got = build_loss("am", scale=s, k=k, reduction=reduction)(x, t)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("s,m,k,gamma_pos,gamma_neg,clip", AM_CASES)
@pytest.mark.parametrize("detach", [False, True])
def test_am_gradient_matches_float64_autograd(s, m, k, gamma_pos, gamma_neg, clip, detach):
    x, t, _ = cosine_batch(int(s * 10 + m * 100) + 1, s)
    x64 = x.double().requires_grad_()
    am_torch64(x64, t, s, m, k, gamma_pos, gamma_neg, clip, detach=detach).backward()
    x32 = x.clone().requires_grad_()
    AngularMarginLoss(scale=s, margin=m, k=k, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip,
                      detach_focal_weight=detach)(x32, t).backward()
    np.testing.assert_allclose(x32.grad.double().numpy(), x64.grad.numpy(), rtol=2e-4, atol=1e-7)
    assert (x32.grad[t < 0] == 0).all()


def test_am_focal_gradient_flows_through_weights_by_default():
    x, t, _ = cosine_batch(4, 23.0)
    grads = []
    for detach in (False, True):
        xx = x.clone().requires_grad_()
        AngularMarginLoss(margin=0.1, gamma_pos=1.0, gamma_neg=2.0,
                          detach_focal_weight=detach)(xx, t).backward()
        grads.append(xx.grad)
    assert not torch.allclose(grads[0], grads[1])
    assert AngularMarginLoss().detach_focal_weight is False


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_am_label_smoothing_and_always_clip(reduction, eps):
    x, t, z = cosine_batch(5, 23.0)
    for gp, gn, always in [(0.0, 0.0, True), (0.0, 1.0, False), (1.0, 2.0, True)]:
        loss = AngularMarginLoss(margin=0.05, gamma_pos=gp, gamma_neg=gn, always_clip=always,
                                 label_smoothing=eps, reduction=reduction)
        want = am_reference(z.numpy(), t.numpy(), 23.0, 0.05, 0.7, gp, gn, 0.05, reduction,
                            label_smoothing=eps, always_clip=always)
        assert loss(x, t).item() == pytest.approx(want, rel=1e-5)


def test_am_margin_raises_every_term():
    """Without focusing the margin makes every known term larger (harder positives and negatives)."""
    x, t, _ = cosine_batch(6, 23.0)
    y = t.clamp(min=0).float()
    a = AngularMarginLoss().elementwise(x, y)
    b = AngularMarginLoss(margin=0.1).elementwise(x, y)
    assert bool((a > 0).all()) and bool((b > a).all())


def test_aam_defaults_and_registry():
    assert {"am", "aam"} <= set(LOSSES)
    am, aam = build_loss("am"), build_loss("AAM")
    assert type(am) is AngularMarginLoss and isinstance(aam, AsymmetricAngularMarginLoss)
    assert (am.scale, am.margin, am.k, am.gamma_pos, am.gamma_neg, am.reduction) == (23.0, 0.0, 0.7, 0.0,
                                                                                       0.0, "sum")
    assert (aam.gamma_pos, aam.gamma_neg, aam.clip, aam.k, aam.scale) == (0.0, 1.0, 0.05, 0.7, 23.0)
    assert aam.focusing and not am.focusing
    custom = build_loss("aam", scale=17, margin=0.02, gamma_pos=1, k=0.8)
    assert (custom.scale, custom.margin, custom.gamma_pos, custom.gamma_neg) == (17.0, 0.02, 1.0, 1.0)
    x, t, _ = cosine_batch(7, 23.0)
    same = AngularMarginLoss(gamma_neg=1.0)
    assert aam(x, t).item() == pytest.approx(same(x, t).item(), rel=1e-6)


def test_am_scale_can_be_synced_with_the_head():
    loss = build_loss("am")
    loss.scale = 17
    assert loss.scale == 17.0 and "scale=17.0" in repr(loss)
    x, t, _ = cosine_batch(8, 17.0)
    assert loss(x, t).item() == pytest.approx(build_loss("am", scale=17.0)(x, t).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="scale"):
        loss.scale = 0


@pytest.mark.parametrize("name", ["am", "aam"])
@pytest.mark.parametrize("bad", [
    {"scale": 0}, {"scale": -23}, {"scale": float("nan")}, {"scale": float("inf")}, {"scale": "big"},
    {"k": 1.5}, {"k": -0.1}, {"gamma_pos": -1}, {"gamma_neg": -0.5}, {"clip": 1.0}, {"clip": -0.05},
    {"margin": -0.1}, {"margin": 1.0}, {"label_smoothing": 1.0}, {"reduction": "none"},
])
def test_am_parameter_errors(name, bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        build_loss(name, **bad)


def test_am_unknown_parameter_and_edges_accepted():
    with pytest.raises(ConfigError, match=r"'am'.*'gamma'.*gamma_neg"):
        build_loss("am", gamma=1)
    for ok in ({"k": 0}, {"k": 1}, {"clip": 0}, {"clip": None}, {"margin": 0.5}, {"gamma_neg": 0}):
        build_loss("aam", **ok)


@pytest.mark.parametrize("name", ["am", "aam"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_am_unknown_targets_ignored(name, reduction):
    x, t, _ = cosine_batch(9, 23.0)
    loss = build_loss(name, margin=0.1, gamma_pos=1.0, reduction=reduction)
    changed = x.clone()
    changed[t < 0] = 1e4
    assert loss(x, t).item() == pytest.approx(loss(changed, t).item(), rel=1e-6)
    xx = torch.randn(3, 4, requires_grad=True)
    zero = loss(xx, torch.full((3, 4), -1))
    assert zero.item() == 0.0 and zero.grad_fn is not None
    zero.backward()
    assert (xx.grad == 0).all()


@pytest.mark.parametrize("name,params", [
    ("am", {}), ("am", {"margin": 0.1}), ("aam", {}), ("aam", {"margin": 0.1, "gamma_pos": 1.0}),
    ("aam", {"clip": 0}),
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_am_low_precision_logits_near_saturation_are_finite(name, params, dtype):
    """x = 23 z with z near +-1 and the wrong label: the terms are log sigmoid(-23 - 23 m)."""
    z = torch.tensor([[1.0, -1.0, 0.99, -0.99, 1.1, -1.1, 0.3, -0.3]])
    t = torch.tensor([[0, 1, 0, 1, 0, 1, 1, 0]])
    x = (23.0 * z).to(dtype).requires_grad_()
    loss = build_loss(name, scale=23.0, **params)(x, t)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    # reference value from float64 (tolerance: x itself is rounded to dtype)
    want = am_reference(x.detach().double().numpy() / 23.0, t.numpy(), 23.0,
                        params.get("margin", 0.0), 0.7, params.get("gamma_pos", 0.0),
                        params.get("gamma_neg", 1.0 if name == "aam" else 0.0),
                        params.get("clip", 0.05), "sum")
    assert loss.item() == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("name", ["am", "aam"])
def test_am_is_exact_where_the_naive_fp16_log_sigmoid_is_minus_inf(name):
    """The reference's log(sigmoid(x)) in fp16 (autocast) at x = -23 is log(0) = -inf; mlic's AM
    on the same fp16 logits is finite and equals the float64 formula."""
    x = torch.tensor([[-23.0, 23.0, -23.0]], dtype=torch.float16)
    t = torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.isneginf(torch.log(torch.sigmoid(x))[0, 0])  # the reference's positive term
    loss = build_loss(name)(x, t)
    want = am_reference(x.double().numpy() / 23.0, t.numpy(), 23.0, 0.0, 0.7, 0.0,
                        1.0 if name == "aam" else 0.0, 0.05, "sum")
    assert torch.isfinite(loss) and loss.item() == pytest.approx(want, rel=1e-4)
