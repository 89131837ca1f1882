"""Parameter groups (which weights decay; the doubled bias lr) and train.head_lr_scale: the head's
parameters at a multiple of the backbone's lr, in every group."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mlic.config import load_config
from mlic.engine.optim import build_optimizer, build_scheduler, parameter_groups
from mlic.models import create_model
from tests.conftest import TINY_BACKBONE


@pytest.mark.parametrize("double_bias_lr", [False, True])
def test_head_lr_scale_multiplies_only_the_head(double_bias_lr) -> None:
    model = create_model(TINY_BACKBONE, 4, head="ml_decoder",
                         head_params={"embed_dim": 16, "num_heads": 2, "ff_dim": 16})
    train = load_config(None, ["train.optimizer=sgd", "train.lr=0.01", "train.head_lr_scale=10",
                               f"train.double_bias_lr={str(double_bias_lr).lower()}"])["train"]
    optimizer = build_optimizer(model, train)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    bias_scale = 2.0 if double_bias_lr else 1.0
    for name, param in model.named_parameters():
        expected = 0.01 * (10.0 if name.startswith("head.") else 1.0)
        if double_bias_lr and name.endswith("bias"):
            expected *= bias_scale
        assert lr_of[id(param)] == pytest.approx(expected), name
    assert len(lr_of) == len(list(model.parameters()))  # every parameter in exactly one group
    schedule = build_scheduler(optimizer, {**train, "epochs": 1}, 10)
    peaks = sorted({round(g["max_lr"], 6) for g in schedule.optimizer.param_groups})
    assert max(peaks) == pytest.approx(0.01 * 10 * bias_scale)  # OneCycle peaks per group


def test_head_lr_scale_one_keeps_the_groups() -> None:
    model = torch.nn.Module()
    model.head = torch.nn.Linear(3, 2)
    train = load_config(None, ["train.optimizer=sgd", "train.double_bias_lr=false"])["train"]
    assert [g["name"] for g in build_optimizer(model, train).param_groups] == ["decay", "no_decay"]


def test_parameter_groups():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=True)
            self.bn = nn.BatchNorm2d(4)
            self.norm = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 2)
            self.label_queries = nn.Embedding(2, 4)
            self.query_embed = nn.Parameter(torch.zeros(2, 4))
            self.scale = nn.Parameter(torch.ones(1))
            self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)

    net = Net()
    groups = {g["name"]: g for g in parameter_groups(net, 5e-4, double_bias_lr=True)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["bias"] == {id(net.conv.bias), id(net.bn.bias), id(net.norm.bias), id(net.fc.bias)}
    assert ids["no_decay"] == {id(net.bn.weight), id(net.norm.weight), id(net.scale),
                               id(net.label_queries.weight), id(net.query_embed)}
    assert ids["decay"] == {id(net.conv.weight), id(net.fc.weight)}
    assert groups["bias"]["lr_scale"] == 2.0 and groups["bias"]["weight_decay"] == 0.0
    assert groups["no_decay"]["lr_scale"] == 1.0 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["lr_scale"] == 1.0 and groups["decay"]["weight_decay"] == 5e-4
    assert groups["bias"].keys() == groups["decay"].keys()
    assert list(groups) == ["decay", "no_decay", "bias"]  # the logged param_groups[0] is base lr

    # One rule: the doubled bias lr moves the biases to their own group, and changes nothing else.
    plain = {g["name"]: g for g in parameter_groups(net, 5e-4, double_bias_lr=False)}
    assert list(plain) == ["decay", "no_decay"]
    assert {id(p) for p in plain["decay"]["params"]} == ids["decay"]
    assert {id(p) for p in plain["no_decay"]["params"]} == ids["no_decay"] | ids["bias"]
    assert all(g["lr_scale"] == 1.0 for g in plain.values())
    # Without no_bias_decay, every parameter decays.
    (everything,) = parameter_groups(net, 5e-4, no_bias_decay=False, double_bias_lr=True)
    assert everything["name"] == "decay" and len(everything["params"]) == len(ids["decay"]) + len(
        ids["no_decay"]) + len(ids["bias"])
    # an empty group is left out
    assert [g["name"] for g in parameter_groups(nn.Linear(2, 2, bias=False), 0.1)] == ["decay"]

    # lr = base lr x lr_scale, and OneCycle's per-group max_lr follows (biases peak at 2x)
    built = parameter_groups(net, 5e-4, double_bias_lr=True)
    for g in built:
        g["lr"] = 0.01 * g["lr_scale"]
    opt = torch.optim.SGD(built, lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                total_steps=10, pct_start=0.2)
    opt.step()
    sched.step()  # step 1 = the end of phase 1 (0.2 * 10 - 1): the peak
    peak = {g["name"]: g["lr"] for g in opt.param_groups}
    assert peak["bias"] == pytest.approx(0.02) and peak["decay"] == pytest.approx(0.01)
    opt.step()
    sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["bias"] == pytest.approx(2 * lrs["decay"]) and lrs["decay"] < 0.01
