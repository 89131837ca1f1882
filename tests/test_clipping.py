"""Gradient clipping per part (backbone, head) against norms computed by hand in float64."""
import math

import pytest
import torch
from torch import nn

from mlic.engine.clipping import GradientClipper, gradient_parts
from mlic.engine.step import OptimizerStep


class TwoParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 1, bias=False)
        self.head = nn.Linear(1, 1, bias=False)


def with_grads(backbone, head):
    model = TwoParts()
    model.backbone.weight.grad = torch.tensor([backbone], dtype=torch.float32)
    model.head.weight.grad = torch.tensor([head], dtype=torch.float32)
    return model


def test_parts_clipped_apart():
    model = with_grads([3.0, 4.0], [100.0])  # norms 5 and 100: only the head is over 10
    norm, clipped = GradientClipper(model, 10.0, "parts")()
    assert clipped and norm == pytest.approx(math.sqrt(25 + 100 ** 2), rel=1e-6)
    assert model.backbone.weight.grad.tolist() == [[3.0, 4.0]]  # under the bound: untouched
    assert model.head.weight.grad.item() == pytest.approx(10.0, rel=1e-5)


def test_model_scope_is_one_global_norm():
    model = with_grads([3.0, 4.0], [100.0])
    total = math.sqrt(25 + 100 ** 2)
    norm, clipped = GradientClipper(model, 10.0, "model")()
    assert clipped and norm == pytest.approx(total, rel=1e-6)
    scale = 10.0 / total  # the global clip shrinks the small backbone gradient too
    assert model.backbone.weight.grad[0].tolist() == pytest.approx([3 * scale, 4 * scale], rel=1e-5)
    assert model.head.weight.grad.item() == pytest.approx(100 * scale, rel=1e-5)


def test_nothing_clipped_under_the_bound():
    model = with_grads([0.3, 0.4], [2.0])
    norm, clipped = GradientClipper(model, 10.0)()
    assert not clipped and norm == pytest.approx(math.sqrt(0.25 + 4.0), rel=1e-6)
    assert model.head.weight.grad.item() == 2.0


def test_a_model_without_head_is_one_part_and_wrappers_are_seen_through():
    bare = nn.Linear(2, 2)
    assert len(gradient_parts(bare, "parts")) == 1
    wrapped = nn.Module()
    wrapped.module = TwoParts()  # as DDP holds the model
    assert [len(p) for p in gradient_parts(wrapped, "parts")] == [1, 1]
    with pytest.raises(ValueError, match="grad_clip_scope"):
        gradient_parts(bare, "layer")


def test_step_clips_per_part_by_default():
    torch.manual_seed(0)
    model = TwoParts()
    forward = lambda x: model.head(model.backbone(x))  # noqa: E731
    model.forward = forward
    loss_fn = lambda out, target, **_: ((out - target) ** 2).sum() * 1e4  # noqa: E731
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    step = OptimizerStep(model, loss_fn, sgd, torch.device("cpu"), grad_clip=1.0)
    assert [len(p) for p in step.clipper.parts] == [1, 1]
    before = [p.detach().clone() for p in (model.backbone.weight, model.head.weight)]
    step(torch.ones(4, 2), torch.zeros(4, 1))
    moves = [float((p.detach() - b).norm()) for p, b in zip((model.backbone.weight, model.head.weight), before)]
    assert step.clipped and moves == pytest.approx([1.0, 1.0], rel=1e-4)  # lr 1 x each part's bound
