"""Attention heads: ML-Decoder and Query2Label, with the sine position encoding they share."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlic
from mlic.engine.checkpoint import load_model, model_metadata, save_model
from mlic.errors import ConfigError
from mlic.models.heads import build_head
from mlic.models.heads.ml_decoder import MLDecoderHead
from mlic.models.heads.position import sine_position_encoding
from mlic.models.heads.query2label import Query2LabelHead
from conftest import TINY_BACKBONE

# Small widths keep every test well under a second on one CPU thread.
SMALL = {"ml_decoder": {"embed_dim": 32, "num_heads": 4, "ff_dim": 64},
         "query2label": {"hidden_dim": 32, "num_heads": 4, "ff_dim": 64}}
CASES = [(head, cosine) for head in SMALL for cosine in (False, True)]


def small_model(head: str, num_classes: int, cosine: bool, **extra):
    return mlic.create_model(TINY_BACKBONE, num_classes, head=head,
                             head_params={**SMALL[head], "cosine": cosine, **extra})


@pytest.mark.parametrize("head,cosine", CASES)
def test_forward_shape_any_grid(head: str, cosine: bool) -> None:
    torch.manual_seed(0)
    model = small_model(head, 5, cosine).eval()
    with torch.no_grad():
        for height, width in ((32, 32), (64, 64), (64, 32)):  # 1x1, 2x2 and 2x1 feature maps
            logits = model(torch.randn(2, 3, height, width))
            assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    if cosine:  # the scale is inside: |logit| <= scale * (1 + |bias|), bias starts at 0
        assert logits.abs().max() <= 23.0 + 1e-4


@pytest.mark.parametrize("head,cosine", CASES)
def test_every_trainable_parameter_gets_a_gradient(head: str, cosine: bool) -> None:
    torch.manual_seed(0)
    model = small_model(head, 5, cosine).train()
    loss = mlic.build_loss("bce")(model(torch.randn(2, 3, 64, 64)), torch.randint(0, 2, (2, 5)))
    loss.backward()
    missing = [n for n, p in model.head.named_parameters() if p.requires_grad and
               (p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0)]
    assert not missing


@pytest.mark.parametrize("head,cosine", CASES)
def test_a_few_steps_lower_the_loss(head: str, cosine: bool) -> None:
    torch.manual_seed(0)
    model = small_model(head, 5, cosine, dropout=0.0).train()
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 2, (4, 5)).float()
    criterion = mlic.build_loss("bce")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = criterion(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------------ ML-Decoder

@pytest.mark.parametrize("cosine", (False, True))
def test_ml_decoder_group_fc_equals_a_loop_over_groups(cosine: bool) -> None:
    torch.manual_seed(0)
    head = MLDecoderHead(16, 7, num_queries=3, embed_dim=32, num_heads=4, ff_dim=64, cosine=cosine,
                         scale=5.0).eval()
    assert (head.num_queries, head.group_size) == (3, 3)  # 9 outputs, truncated to 7
    with torch.no_grad():
        head.bias.normal_()  # non-zero, to see it land on the right class
        features = torch.randn(2, 16, 3, 2)
        logits = head(features)
        tokens = head.activation(head.project(features.flatten(2).transpose(1, 2)))
        h = head.decoder(head.queries.expand(2, -1, -1), tokens)  # (B, K, E)
    expected = torch.empty(2, 7)
    for k in range(3):
        for j in range(3):
            c = k * 3 + j
            if c >= 7:
                continue
            query, column = h[:, k], head.group_weight[k, :, j].detach()
            if cosine:
                expected[:, c] = 5.0 * (F.cosine_similarity(query, column[None], dim=-1) + head.bias[c])
            else:
                expected[:, c] = query @ column + head.bias[c]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_ml_decoder_queries_are_a_saved_buffer() -> None:
    head = MLDecoderHead(16, 7, embed_dim=32, num_heads=4, ff_dim=64)
    assert "queries" in head.state_dict() and head.queries.shape == (7, 32)
    assert not any(p is head.queries for p in head.parameters())
    assert "queries" not in dict(head.named_parameters())


def test_ml_decoder_number_of_queries() -> None:
    wide = MLDecoderHead(16, 150, embed_dim=32, num_heads=4, ff_dim=64).eval()
    assert (wide.num_queries, wide.group_size) == (100, 2)
    assert wide.group_weight.shape == (100, 32, 2) and wide.bias.shape == (150,)
    assert wide(torch.randn(1, 16, 1, 1)).shape == (1, 150)
    assert MLDecoderHead(16, 7, embed_dim=32, num_heads=4).num_queries == 7  # one query per class
    capped = MLDecoderHead(16, 7, num_queries=50, embed_dim=32, num_heads=4)
    assert (capped.num_queries, capped.group_size) == (7, 1)
    assert isinstance(MLDecoderHead(16, 7, cosine=True, embed_dim=32).activation, nn.LeakyReLU)
    with pytest.raises(ConfigError):
        build_head("ml_decoder", 16, 7, embed_dim=30, num_heads=4)


# ------------------------------------------------------------------------------ Query2Label

def test_query2label_structure() -> None:
    head = Query2LabelHead(16, 5, num_heads=4, encoder_layers=1, decoder_layers=2, ff_dim=32)
    assert isinstance(head.input_proj, nn.Identity)  # hidden = in_features: no projection
    assert isinstance(Query2LabelHead(16, 5, hidden_dim=8, ff_dim=32).input_proj, nn.Conv2d)
    decoder_attention = [m for m in head.decoder.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(decoder_attention) == 2  # one cross-attention per layer, no self-attention
    assert not any("self_attn" in name for name, _ in head.decoder.named_modules())
    assert any("self_attn" in name for name, _ in head.encoder.named_modules())
    assert head.label_queries.weight.requires_grad and head.label_queries.weight.shape == (5, 16)
    with pytest.raises(ConfigError):
        build_head("query2label", 18, 5, num_heads=4)


@pytest.mark.parametrize("cosine", (False, True))
def test_query2label_group_wise_linear(cosine: bool) -> None:
    torch.manual_seed(0)
    head = Query2LabelHead(16, 5, ff_dim=32, cosine=cosine, scale=7.0).eval()
    features = torch.randn(2, 16, 2, 3)
    captured = {}
    head.decoder_norm.register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    with torch.no_grad():
        logits = head(features)
    h, w = captured["h"], head.class_weight.detach()
    for k in range(5):
        if cosine:
            expected = 7.0 * F.cosine_similarity(h[:, k], w[k][None], dim=-1)
        else:
            expected = h[:, k] @ w[k] + head.class_bias[k].detach()
        torch.testing.assert_close(logits[:, k], expected, rtol=1e-5, atol=1e-5)
    assert (head.class_bias is None) == cosine


def test_sine_position_encoding() -> None:
    pos = sine_position_encoding(3, 4, 16, "cpu", torch.float32)
    assert pos.shape == (12, 16)
    assert pos.min() >= -1 and pos.max() <= 1
    assert torch.cdist(pos, pos).add(torch.eye(12)).min() > 1e-3  # every position is distinct
    # First half encodes the row, second half the column (row-major tokens).
    assert torch.equal(pos[0, :8], pos[3, :8]) and not torch.equal(pos[0, :8], pos[4, :8])
    assert torch.equal(pos[0, 8:], pos[4, 8:]) and not torch.equal(pos[0, 8:], pos[1, 8:])
    # The last row/column sits at 2*pi: sin 0 and cos 1 at the lowest frequency.
    torch.testing.assert_close(pos[11, [0, 1, 8, 9]], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(pos[0, 0], torch.tensor(math.sin(2 * math.pi / 3)))
    assert sine_position_encoding(2, 2, 16, dtype=torch.float16).dtype == torch.float16


# ------------------------------------------------------------------------------ both heads

@pytest.mark.parametrize("head", SMALL)
def test_eval_is_deterministic_and_train_uses_dropout(head: str) -> None:
    torch.manual_seed(0)
    model = small_model(head, 5, False, dropout=0.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        features = torch.randn(2, model.backbone.num_features, 2, 2)
        assert not torch.equal(model.head(features), model.head(features))


@pytest.mark.parametrize("head,cosine", [("ml_decoder", True), ("query2label", False)])
def test_saved_model_gives_identical_logits(head: str, cosine: bool, tmp_path) -> None:
    torch.manual_seed(0)
    model = small_model(head, 5, cosine).eval()
    save_model(tmp_path, "best", model.state_dict(), model_metadata(model, list("abcde")))
    torch.manual_seed(1)  # a reloaded ML-Decoder draws other queries, then gets the saved ones back
    loaded, _ = load_model(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("head", SMALL)
def test_head_exports_with_dynamic_batch_and_grid(head: str) -> None:
    """torch.export (the route to ONNX and other runtimes) with no shape baked into the graph."""
    torch.manual_seed(0)
    module = build_head(head, 16, 5, **SMALL[head]).eval()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    exported = torch.export.export(module, (torch.randn(2, 16, 3, 2),),
                                   dynamic_shapes={"features": dims}).module()
    other = torch.randn(3, 16, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(exported(other), module(other))
