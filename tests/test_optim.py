"""train.head_lr_scale: the head's parameters at a multiple of the backbone's lr, in every group."""
from __future__ import annotations

import pytest
import torch

from mlic.config import load_config
from mlic.engine.optim import build_optimizer, build_scheduler
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
