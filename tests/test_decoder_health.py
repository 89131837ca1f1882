"""The decoder-collapse measures, the clipped-step count, and their columns in metrics.csv."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mlic
from mlic.engine.decoder_health import decoder_health, health_measures, last_cross_attention
from mlic.run_folder import read_metrics
from mlic.engine.step import OptimizerStep
from mlic.losses import build_loss
from mlic.models import create_model
from tests.conftest import TINY_BACKBONE, tiny_config


def test_health_measures_against_a_float64_hand_computation() -> None:
    rng = np.random.default_rng(0)
    query, attended, decoded = (rng.normal(size=(5, 3, 4)) for _ in range(3))
    decoded += 2.0  # a shared component, as a collapsing decoder has
    ratio = np.linalg.norm(attended, axis=-1).mean() / np.linalg.norm(query, axis=-1).mean()
    centred = decoded - decoded.mean(axis=0, keepdims=True)
    share = (centred ** 2).sum() / (decoded ** 2).sum()
    got = health_measures(*(torch.tensor(a, dtype=torch.float32) for a in (query, attended, decoded)))
    assert got["attn_ratio"] == pytest.approx(ratio, rel=1e-6)
    assert got["image_share"] == pytest.approx(share, rel=1e-6)
    same = torch.ones(4, 3, 2)  # one output for every image: nothing depends on the image
    assert health_measures(same, same, same)["image_share"] == 0.0


def test_decoder_health_reads_the_decoder_heads_and_skips_the_others() -> None:
    torch.manual_seed(0)
    decoder = create_model(TINY_BACKBONE, 5, head="ml_decoder",
                           head_params={"embed_dim": 16, "num_heads": 2, "ff_dim": 16}).train()
    images = torch.randn(4, 3, 32, 32)
    health = decoder_health(decoder, images)
    assert set(health) == {"attn_ratio", "image_share"}
    assert health["attn_ratio"] > 0 and 0 < health["image_share"] < 1
    assert decoder.training  # restored after the eval-mode pass
    q2l = create_model(TINY_BACKBONE, 5, head="query2label",
                       head_params={"hidden_dim": 16, "num_heads": 2, "ff_dim": 16})
    assert last_cross_attention(q2l.head) is not None  # the last of its decoder layers
    linear = create_model(TINY_BACKBONE, 5, head="linear")
    assert decoder_health(linear, images) is None
    assert decoder_health(decoder, images[:1]) is None  # a share needs two images


def test_optimizer_step_reports_clipping() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    loss = build_loss("bce", reduction="sum")
    x, y = torch.randn(8, 3) * 100, torch.ones(8, 2)
    for bound, clipped in ((1.0, True), (1e9, False)):
        step = OptimizerStep(model, loss, torch.optim.SGD(model.parameters(), lr=0.0),
                             torch.device("cpu"), grad_clip=bound)
        step(x, y)
        assert step.clipped is clipped and step.grad_norm > 1.0


def test_metrics_csv_has_the_decoder_health_and_the_clipped_steps(colour_dataset, tmp_path) -> None:
    cfg = tiny_config(colour_dataset, tmp_path, epochs=1, grad_clip=1e-6)
    cfg["model"].update(head="ml_decoder",
                        head_params={"embed_dim": 16, "num_heads": 2, "ff_dim": 16})
    run = mlic.train(cfg, progress=False, quiet=True)
    row = read_metrics(run)[0]
    assert float(row["attn_ratio"]) > 0 and 0 <= float(row["image_share"]) <= 1
    assert int(row["clipped_steps"]) == int(row["steps"])  # every step clipped at 1e-6
    assert "decoder: attn/query" in (run / "train.log").read_text()
