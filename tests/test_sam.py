"""SAMStep against hand computations; skip logic; accumulation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mlic.engine.accumulate import backward_in_chunks, chunk_weights, split_batch
from mlic.engine.optim import parameter_groups
from mlic.engine.sam import SAMStep
from mlic.losses import build_loss

CPU = torch.device("cpu")


class SquaredError(nn.Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits, targets):
        err = (logits - targets) ** 2
        return err.mean() if self.reduction == "mean" else err.sum()


def data(n=5, d=3, c=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, c, generator=g, dtype=dtype)


def linear(d=3, c=2, seed=1, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Linear(d, c).to(dtype)


def functional_loss(weight, bias, x, y, reduction="mean"):
    err = (x @ weight.T + bias - y) ** 2
    return err.mean() if reduction == "mean" else err.sum()


def grad_at(weight, bias, x, y, reduction="mean"):
    w, b = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    return torch.autograd.grad(functional_loss(w, b, x, y, reduction), (w, b))


def hand_sam(model, x, y, lr, wd, rho, adaptive, reduction="mean"):
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    gw, gb = grad_at(w, b, x, y, reduction)
    if adaptive:
        norm = torch.sqrt(((w.abs() * gw) ** 2).sum() + ((b.abs() * gb) ** 2).sum())
        ew, eb = rho * w ** 2 * gw / (norm + 1e-12), rho * b ** 2 * gb / (norm + 1e-12)
    else:
        norm = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())
        ew, eb = rho * gw / (norm + 1e-12), rho * gb / (norm + 1e-12)
    g2w, g2b = grad_at(w + ew, b + eb, x, y, reduction)
    loss2 = functional_loss(w + ew, b + eb, x, y, reduction)
    return w - lr * (g2w + wd * w), b - lr * (g2b + wd * b), float(loss2)


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_matches_hand_computation(adaptive):
    x, y = data()
    model = linear()
    loss_at_w = float(functional_loss(model.weight.detach(), model.bias.detach(), x, y))
    lr, wd, rho = 0.1, 0.01, 0.05
    expected_w, expected_b, expected_loss = hand_sam(model, x, y, lr, wd, rho, adaptive)
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd, momentum=0.0)
    step = SAMStep(model, SquaredError(), opt, CPU, rho=rho, adaptive=adaptive)
    loss, stepped = step(x, y)
    assert stepped
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    torch.testing.assert_close(model.weight.detach(), expected_w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model.bias.detach(), expected_b, rtol=1e-12, atol=1e-14)
    assert loss > loss_at_w  # the reported loss is the one at w + e, a step up the gradient


def test_rho_zero_is_plain_sgd():
    x, y = data()
    model, reference = linear(), linear()
    step = SAMStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), CPU, rho=0.0)
    step(x, y)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    SquaredError()(reference(x), y).backward()
    opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nan_target_skips_whole_step():
    x, y = data()
    y[0, 0] = float("nan")
    model = linear()
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _, stepped = SAMStep(model, SquaredError(), opt, CPU)(x, y)
    assert not stepped
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    assert opt.state_dict()["state"] == {}  # the base optimizer never stepped


def inject_inf_on_call(param, call):
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == call else grad

    param.register_hook(hook)
    return calls


@pytest.mark.parametrize("bad_pass", [1, 2])
@pytest.mark.parametrize("scaled", [False, True])
def test_inf_gradient_in_either_pass_skips_and_restores(bad_pass, scaled):
    x, y = data()
    model = linear()
    before = copy.deepcopy(model.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = SAMStep(model, SquaredError(), opt, CPU, scaler=scaler)
    calls = inject_inf_on_call(model.weight, bad_pass)
    _, stepped = step(x, y)
    assert not stepped and calls["n"] == bad_pass  # a bad first pass has no second pass
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)  # restored exactly
    assert all(p.grad is None for p in model.parameters())
    if scaled:
        assert scaler.get_scale() == 512.0  # the scale dropped once
    # the next step goes through normally
    _, stepped = step(x, y)
    assert stepped


def test_enabled_scaler_gives_the_unscaled_result():
    x, y = data()
    model = linear()
    expected_w, expected_b, expected_loss = hand_sam(model, x, y, 0.1, 0.0, 0.05, False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    step = SAMStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                   scaler=scaler)
    loss, stepped = step(x, y)
    assert stepped and loss == pytest.approx(expected_loss, rel=1e-12)
    torch.testing.assert_close(model.weight.detach(), expected_w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model.bias.detach(), expected_b, rtol=1e-12, atol=1e-14)
    assert scaler.state_dict()["_growth_tracker"] == 2  # updated after each pass


def test_grad_clip_applies_to_second_gradient():
    x, y = data()
    model = linear()
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    gw, gb = grad_at(w, b, x, y)
    norm = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())
    ew, eb = 0.05 * gw / norm, 0.05 * gb / norm
    g2w, g2b = grad_at(w + ew, b + eb, x, y)
    norm2 = torch.sqrt((g2w ** 2).sum() + (g2b ** 2).sum())
    clip = float(norm2) / 4
    coef = clip / (norm2 + 1e-6)
    step = SAMStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                   grad_clip=clip)
    step(x, y)
    torch.testing.assert_close(model.weight.detach(), w - 0.1 * coef * g2w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.bias.detach(), b - 0.1 * coef * g2b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_accumulation_equals_whole_batch(reduction, adaptive):
    x, y = data(n=7)  # uneven chunks: 3/2/2 for accumulate=3
    results = []
    for accumulate in (1, 3):
        model = linear()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        step = SAMStep(model, SquaredError(reduction), opt, CPU, adaptive=adaptive,
                       accumulate=accumulate)
        losses = [step(x, y)[0] for _ in range(3)]
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    (loss1, params1), (loss3, params3) = results
    assert loss3 == pytest.approx(loss1, rel=1e-12)
    for a, b in zip(params1, params3):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # and the single-chunk run is the hand computation
    model = linear()
    _, _, expected_loss = hand_sam(model, x, y, 0.05, 1e-3, 0.05, adaptive, reduction)
    assert loss1[0] == pytest.approx(expected_loss, rel=1e-12)


def test_accumulation_with_mlic_mean_loss_and_unknown_targets():
    """MultiLabelLoss averages over known entries: chunks are weighted by their known count."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g)
    y = (torch.rand(6, 3, generator=g) > 0.5).float()
    y[:3, :2] = -1  # the first chunk has far fewer known entries than the second
    loss_fn = build_loss("bce", reduction="mean")
    results = []
    for accumulate in (1, 2):
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        step = SAMStep(model, loss_fn, torch.optim.SGD(model.parameters(), lr=0.5), CPU,
                       accumulate=accumulate)
        loss, stepped = step(x, y)
        assert stepped
        results.append((loss, [p.detach().clone() for p in model.parameters()]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_more_chunks_than_rows():
    x, y = data(n=2)
    model = linear()
    loss, stepped = SAMStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                            accumulate=4)(x, y)
    assert stepped and loss > 0


def test_split_batch_and_weights():
    x, y = torch.arange(7.0)[:, None], torch.arange(7.0)[:, None]
    pieces = split_batch(x, y, 3)
    assert [len(p[0]) for p in pieces] == [3, 2, 2]
    torch.testing.assert_close(torch.cat([p[0] for p in pieces]), x)
    assert [len(p[0]) for p in split_batch(x[:2], y[:2], 5)] == [1, 1]
    assert len(split_batch(x, y, 1)) == 1
    assert chunk_weights(SquaredError("mean"), pieces) == [3 / 7, 2 / 7, 2 / 7]
    assert chunk_weights(SquaredError("sum"), pieces) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        chunk_weights(SquaredError("none"), pieces)
    with pytest.raises(ValueError):
        split_batch(x, y[:3], 2)


def test_backward_in_chunks_matches_one_backward():
    x, y = data(n=5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    m1, m2 = linear(), linear()
    loss1 = backward_in_chunks(m1, SquaredError(), x, y, scaler, CPU, False, chunks=1)
    loss2 = backward_in_chunks(m2, SquaredError(), x, y, scaler, CPU, False, chunks=2)
    assert float(loss1) == pytest.approx(float(loss2), rel=1e-12)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


def test_state_dict_round_trip():
    x, y = data()
    model = linear()
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=3)
    step = SAMStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                   scaler=scaler)
    step(x, y)
    inject_inf_on_call(model.weight, 1)  # the next call's first pass overflows
    step(x, y)
    state = step.state_dict()
    other = SAMStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), CPU,
                    scaler=torch.amp.GradScaler("cpu"))
    other.load_state_dict(state)
    assert other.scaler.state_dict() == scaler.state_dict() and other.scaler.get_scale() == 128.0
    disabled = SAMStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), CPU)
    assert disabled.state_dict() == {"scaler": {}}
    disabled.load_state_dict(disabled.state_dict())
    # the same layout as OptimizerStep's: a resume can switch between them
    from mlic.engine.step import OptimizerStep
    plain = OptimizerStep(model, SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1), CPU)
    assert plain.state_dict().keys() == disabled.state_dict().keys()


def test_adamw_base_with_batchnorm_smoke():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    groups = parameter_groups(model, 1e-2, double_bias_lr=True)
    for g in groups:
        g["lr"] = 1e-2 * g["lr_scale"]
    opt = torch.optim.AdamW(groups)
    loss_fn = build_loss("bce")
    x, y = torch.randn(8, 3, 8, 8), (torch.rand(8, 3) > 0.5).float()
    before = [p.detach().clone() for p in model.parameters()]
    step = SAMStep(model, loss_fn, opt, CPU, rho=0.05, adaptive=True, accumulate=2)
    losses = []
    for _ in range(5):
        loss, stepped = step(x, y)
        assert stepped
        losses.append(loss)
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model[1].num_batches_tracked.item() == 5 * 2 * 2  # BN updated in both passes, per chunk
    assert set(opt.state_dict()["state"]) == set(range(len(before)))
