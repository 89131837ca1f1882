"""C-Tran: the head, label-mask training, known labels at inference, the partial-label protocol."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_BACKBONE, tiny_config, write_plain_csv
from mlic.data.table import LabelTable
from mlic.engine.accumulate import backward_in_chunks
from mlic.engine.label_mask import (evaluation_label_states, reveal, sample_revealed,
                                    unknown_only)
from mlic.losses import build_loss
from mlic.models import create_model


def tiny_ctran(classes: int = 6, **params) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(TINY_BACKBONE, classes, head="ctran",
                        head_params={"hidden_dim": 32, **params})


# ------------------------------------------------------------------------------ label masking
def test_sampling_never_reveals_unknown_targets_and_respects_the_bound() -> None:
    generator = torch.Generator().manual_seed(0)
    classes = 10
    targets = torch.randint(0, 2, (4000, classes)).float()
    targets[torch.rand(4000, classes, generator=generator) < 0.3] = -1
    revealed = sample_revealed(targets, 0.75, generator)
    assert not revealed[targets < 0].any()
    counts = revealed.sum(1)
    limit = math.floor(0.75 * classes)  # 7
    assert counts.max() <= limit and counts.min() == 0
    # Rows with every label known: k is uniform on 0..7, so each count is about 1/8 of them.
    full = (targets >= 0).all(1)
    histogram = torch.bincount(counts[full], minlength=limit + 1).double() / full.sum()
    assert len(histogram) == limit + 1
    assert torch.allclose(histogram, torch.full_like(histogram, 1 / (limit + 1)), atol=0.06)


def test_reveal_splits_targets_into_what_is_told_and_what_is_scored() -> None:
    targets = torch.tensor([[1., 0., -1., 1.], [0., 1., 1., -1.]])
    revealed = torch.tensor([[True, False, False, True], [False, False, True, False]])
    states, scored = reveal(targets, revealed)
    assert states.tolist() == [[1, -1, -1, 1], [-1, -1, 1, -1]]
    assert scored.tolist() == [[-1, 0, -1, -1], [0, 1, -1, -1]]


# ----------------------------------------------------------------------------------- the head
def test_with_every_label_unknown_the_state_table_plays_no_part() -> None:
    model = tiny_ctran().eval()
    images = torch.randn(2, 3, 64, 64)
    unknown = torch.full((2, 6), -1.0)
    before, before_none = model(images, unknown), model(images)
    with torch.no_grad():
        model.head.state_embedding.normal_(0, 5)  # any table at all
    assert torch.equal(model(images, unknown), before)
    assert torch.equal(model(images), before_none)
    assert torch.equal(before, before_none)
    told = unknown.clone()
    told[:, 0] = 1
    assert not torch.allclose(model(images, told), before)


def test_known_states_enter_as_their_own_embeddings() -> None:
    """A label token is label_embedding + state row (negative 0, positive 1), computed by hand."""
    head = tiny_ctran().head
    states = torch.tensor([[1., 0., -1., 1., 0., -1.]])
    tokens = head.label_tokens(1, states, torch.float32)[0]
    e, s = head.label_embedding.detach(), head.state_embedding.detach()
    expected = torch.stack([e[0] + s[1], e[1] + s[0], e[2], e[3] + s[1], e[4] + s[0], e[5]])
    assert torch.allclose(tokens, expected)


def test_ctran_options_and_errors() -> None:
    from mlic.errors import ConfigError
    model = tiny_ctran(position_encoding=True, cosine=True, scale=10.0).eval()
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.abs().max() <= 10.0 + 1e-5  # s * cos
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        tiny_ctran(hidden_dim=30)
    with pytest.raises(ValueError, match="label_states must have shape"):
        model(torch.randn(2, 3, 64, 64), torch.zeros(2, 5))


def test_label_states_are_split_with_the_batch_under_accumulation() -> None:
    model = tiny_ctran(dropout=0.0).eval()  # eval: BatchNorm's running statistics, exact equality
    loss_fn = build_loss("bce")
    images = torch.randn(6, 3, 64, 64)
    targets = torch.randint(0, 2, (6, 6)).float()
    states, scored = reveal(targets, sample_revealed(targets, 0.75, torch.Generator().manual_seed(1)))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    grads = []
    for chunks in (1, 3):
        model.zero_grad()
        backward_in_chunks(model, loss_fn, images, scored, scaler, torch.device("cpu"), False, chunks,
                           label_states=states)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------- evaluation protocol
def test_the_known_set_depends_on_the_image_only() -> None:
    rng = np.random.default_rng(0)
    paths = [f"images/{i}.jpg" for i in range(50)]
    targets = rng.integers(-1, 2, size=(50, 12)).astype(np.int8)
    states = evaluation_label_states(paths, targets, 0.5)
    order = rng.permutation(50)
    shuffled = evaluation_label_states([paths[i] for i in order], targets[order], 0.5)
    assert np.array_equal(shuffled, states[order])  # same set whatever the order or the run
    labelled = (targets >= 0).sum(1)
    assert np.array_equal((states >= 0).sum(1), np.floor(0.5 * labelled).astype(int))
    known = states >= 0
    assert np.array_equal(states[known], targets[known]) and not (targets[known] < 0).any()
    assert (evaluation_label_states(paths, targets, 0.0) == -1).all()
    assert np.array_equal(unknown_only(targets, states)[known], np.full(known.sum(), -1))


def test_hide_fraction_hides_that_share_of_the_labelled_entries() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(-1, 2, size=(40, 9)).astype(np.int8)
    table = LabelTable([f"{i}.png" for i in range(40)], [f"l{j}" for j in range(9)], targets)
    hidden, count = table.hide(0.5, seed=3)
    labelled = (targets >= 0).sum()
    assert count == round(0.5 * labelled) == labelled - (hidden.targets >= 0).sum()
    kept = hidden.targets >= 0
    assert np.array_equal(hidden.targets[kept], targets[kept])
    assert np.array_equal(table.hide(0.5, seed=3)[0].targets, hidden.targets)


# ------------------------------------------------------------------- a trained tiny C-Tran
def write_cooccurrence_set(folder, count: int, seed: int) -> list[tuple[str, list[str]]]:
    """One grey image for all (nothing to see) whose labels come in pairs: a with b, c with d."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        labels = [name for pair, on in zip((("a", "b"), ("c", "d")), rng.integers(0, 2, 2))
                  if on for name in pair]
        Image.new("RGB", (32, 32), (128, 128, 128)).save(folder / f"{i}.png")
        rows.append((f"{folder.name}/{i}.png", labels or ["none"]))
    return rows


@pytest.fixture(scope="module")
def cooccurrence_run(tmp_path_factory):
    from mlic.engine import train
    root = tmp_path_factory.mktemp("pairs")
    data = {"train": write_plain_csv(root / "train.csv", write_cooccurrence_set(root / "tr", 96, 0)),
            "test": write_plain_csv(root / "test.csv", write_cooccurrence_set(root / "te", 32, 1))}
    config = tiny_config(data, root / "runs", epochs=15, lr=0.01, batch_size=16)
    config["model"] = {**config["model"], "head": "ctran",
                       "head_params": {"hidden_dim": 32, "dropout": 0.0}}
    return train(config, progress=False, quiet=True), data


def test_known_labels_move_their_partners(cooccurrence_run) -> None:
    from mlic.engine.checkpoint import load_model
    run, _ = cooccurrence_run
    model, meta = load_model(run)
    model.eval()
    names = meta["label_names"]
    a, b, c, d = (names.index(n) for n in "abcd")
    images = torch.randn(8, 3, 32, 32)
    states = torch.full((8, len(names)), -1.0)
    with torch.no_grad():
        states[:, a], states[:, c] = 1, 0
        told = torch.sigmoid(model(images, states))
        states[:, a], states[:, c] = 0, 1
        flipped = torch.sigmoid(model(images, states))
    # The images say nothing; what a and c are said to be decides b and d.
    assert (told[:, b] - flipped[:, b]).min() > 0.3
    assert (flipped[:, d] - told[:, d]).min() > 0.3


def test_eval_with_known_fraction_scores_only_the_unknown_entries(cooccurrence_run) -> None:
    from mlic.data.formats import load_table
    from mlic.data.transforms import eval_transform
    from mlic.engine.checkpoint import load_model
    from mlic.engine.evaluate import predict_scores
    from mlic.engine.splits import make_loader
    from mlic.evaluation import evaluate
    from mlic.metrics import mean_average_precision
    run, data = cooccurrence_run
    plain = evaluate(run, progress=False, num_workers=0)
    half = evaluate(run, progress=False, num_workers=0, known_fraction=0.5)
    assert half["split"] == "test_known50" and (run / "eval_test_known50.json").is_file()
    # Recomputed by hand: the same known set, scores with it, AP over the other entries.
    model, meta = load_model(run)
    table = load_table(str(data["test"])).with_labels(meta["label_names"])
    states = evaluation_label_states(table.paths, table.targets, 0.5)
    loader = make_loader(table, eval_transform(model.preprocessing), 16, 0, False)
    _, logits, targets = predict_scores(model, loader, torch.device("cpu"), progress=False,
                                        label_states=states)
    expected = mean_average_precision(logits, unknown_only(targets, states)).map
    assert half["mAP"] == pytest.approx(expected, abs=1e-9)
    # Knowing half of the pairs makes the other half predictable: far above the image-only mAP.
    assert half["mAP"] > plain["mAP"] + 0.1


def test_hide_fraction_reaches_the_training_split_only(colour_dataset) -> None:
    from mlic.engine.splits import load_splits
    data = {"train": str(colour_dataset["train"]), "test": str(colour_dataset["test"]),
            "hide_fraction": 0.25}
    splits = load_splits(data, seed=0)
    labelled = splits.train.targets.size
    assert (splits.train.targets == -1).sum() == round(0.25 * labelled)
    assert (splits.test.targets >= 0).all()
    assert any("hide_fraction" in note for note in splits.notes)
