"""Losses against an independent float64 re-derivation of their formulas (methods.md, section 2)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlic.errors import ConfigError, DataError, MlicError
from mlic.losses import LOSSES, AsymmetricLoss, BinaryCrossEntropy, build_loss


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
