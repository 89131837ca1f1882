"""Metrics computed one chunk of classes (or images) at a time give the figures of the whole-array
float64 computation, and keep memory bounded on float32 inputs (mlic.chunks)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import mlic.chunks
from mlic.errors import DataError
from mlic.decisions import choose_thresholds, global_threshold, rule_metrics
from mlic.engine.evaluate import metrics_report, predict_scores
from mlic.engine.score_rows import ScoreRows
from mlic.metrics import (average_precision, mean_average_precision, per_class_prf,
                          threshold_metrics, tune_thresholds)

SMALL, LARGE = 1, 2**40  # CHUNK_BYTES: one class (or image) per chunk; everything in one chunk


def random_data(n: int = 300, c: int = 12, seed: int = 0, tied: bool = True):
    """float32 logits (rounded to 1/8 when ``tied``: many ties), targets with 10 % unknown and
    one class with no known positive."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.int8)
    targets[rng.random((n, c)) < 0.1] = -1
    targets[:, 3] = np.where(targets[:, 3] == 1, -1, targets[:, 3])  # class 3: no known positive
    logits = rng.normal(size=(n, c)) + targets
    logits = (np.round(logits * 8) / 8 if tied else logits).astype(np.float32)
    return logits, targets


def hand_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP in float64 without sorting: a positive's rank is 1 + the known entries scored higher +
    the known entries tied with it that come earlier in the split."""
    s, ap = scores.astype(np.float64), np.full(scores.shape[1], np.nan)
    for k in range(s.shape[1]):
        known = np.flatnonzero(targets[:, k] >= 0)
        sk, pos = s[known, k], targets[known, k] == 1
        if not pos.any():
            continue
        index = np.arange(len(sk))
        tied_earlier = (sk[None, :] == sk[:, None]) & (index[None, :] < index[:, None])
        ahead = (sk[None, :] > sk[:, None]) | tied_earlier  # ahead[i, j]: j ranks before i
        rank = 1 + ahead.sum(axis=1)                      # rank of every known entry
        hits_above = (ahead & pos[None, :]).sum(axis=1) + 1  # positives up to and including it
        ap[k] = np.mean(hits_above[pos] / rank[pos])
    return ap


@pytest.mark.parametrize("chunk", [SMALL, 4000, LARGE])  # 4000 bytes: a few classes per chunk
def test_chunked_ap_equals_the_float64_reference_with_ties_and_unknowns(monkeypatch, chunk):
    logits, targets = random_data()
    monkeypatch.setattr(mlic.chunks, "CHUNK_BYTES", chunk)
    ap = average_precision(logits, targets)
    expected = hand_ap(logits, targets)
    assert np.isnan(ap[3]) and np.isnan(expected[3])
    np.testing.assert_allclose(ap, expected, rtol=1e-9, atol=0)  # NaN where NaN
    result = mean_average_precision(logits, targets)
    assert result.empty_classes == [3]
    assert result.map == pytest.approx(np.nanmean(expected), rel=1e-9)


@pytest.mark.parametrize("chunk", [SMALL, LARGE])
def test_chunked_ap_equals_sklearn_without_ties(monkeypatch, chunk):
    logits, targets = random_data(tied=False, seed=1)
    monkeypatch.setattr(mlic.chunks, "CHUNK_BYTES", chunk)
    ap = average_precision(logits, targets)
    for k in range(targets.shape[1]):
        known = targets[:, k] >= 0
        if (targets[known, k] == 1).any():
            assert ap[k] == pytest.approx(average_precision_score(
                targets[known, k], logits[known, k].astype(np.float64)), rel=1e-9)


@pytest.mark.parametrize("chunk", [SMALL, 4000, LARGE])
def test_float32_chunks_give_exactly_the_float64_figures(monkeypatch, chunk):
    """The same numbers as a float64 copy of the whole input computed in one chunk (the old path)."""
    logits, targets = random_data(seed=2)
    probabilities = (1 / (1 + np.exp(-logits))).astype(np.float32)
    thresholds = np.linspace(0.2, 0.8, targets.shape[1])
    with monkeypatch.context() as whole:
        whole.setattr(mlic.chunks, "CHUNK_BYTES", LARGE)
        reference = (average_precision(logits.astype(np.float64), targets),
                     threshold_metrics(probabilities.astype(np.float64), targets, 0.3),
                     threshold_metrics(probabilities.astype(np.float64), targets, thresholds),
                     tune_thresholds(probabilities.astype(np.float64), targets))
    monkeypatch.setattr(mlic.chunks, "CHUNK_BYTES", chunk)
    np.testing.assert_array_equal(average_precision(logits, targets), reference[0])
    assert threshold_metrics(probabilities, targets, 0.3) == pytest.approx(reference[1], rel=1e-12)
    assert threshold_metrics(probabilities, targets, thresholds) == \
        pytest.approx(reference[2], rel=1e-12)
    np.testing.assert_array_equal(tune_thresholds(probabilities, targets), reference[3])


@pytest.mark.parametrize("chunk", [SMALL, 4000, LARGE])
def test_per_class_counts_by_hand(monkeypatch, chunk):
    logits, targets = random_data(seed=3)
    monkeypatch.setattr(mlic.chunks, "CHUNK_BYTES", chunk)
    prf = per_class_prf(logits, targets, 0.25)
    known, positive = targets >= 0, targets == 1
    predicted = (logits.astype(np.float64) >= 0.25) & known
    np.testing.assert_array_equal(prf.n_correct, (predicted & positive).sum(axis=0))
    np.testing.assert_array_equal(prf.n_predicted, predicted.sum(axis=0))
    np.testing.assert_array_equal(prf.n_positive, positive.sum(axis=0))


def sweep_global_threshold(p: np.ndarray, t: np.ndarray) -> float:
    """Best OF1 cut by brute force over every distinct known score (highest on ties)."""
    known = t >= 0
    best, cut = -1.0, 0.5
    for value in np.unique(p[known].astype(np.float64))[::-1]:
        chosen = (p >= value) & known
        f1 = 2 * (chosen & (t == 1)).sum() / (chosen.sum() + (t == 1).sum())
        if f1 > best:
            best, cut = f1, float(value)
    return cut


@pytest.mark.parametrize("chunk", [SMALL, 4000, LARGE])
def test_chunked_decisions(monkeypatch, chunk):
    logits, targets = random_data(seed=4)
    probabilities = (1 / (1 + np.exp(-logits))).astype(np.float32)
    monkeypatch.setattr(mlic.chunks, "CHUNK_BYTES", chunk)
    assert global_threshold(probabilities, targets) == sweep_global_threshold(probabilities, targets)
    tuned, fallback = choose_thresholds(probabilities, targets, min_positives=25)
    few = (targets == 1).sum(axis=0) < 25
    assert few.any() and (tuned[few] == fallback).all()
    metrics = rule_metrics(probabilities, targets, tuned, min_labels=2)
    # By hand: the rule's labels as a whole (N, C) array, then the metrics of exactly those.
    chosen = probabilities.astype(np.float64) >= tuned
    for i in np.flatnonzero(chosen.sum(axis=1) < 2):
        chosen[i, np.argsort(-probabilities[i], kind="stable")[:2]] = True
    with monkeypatch.context() as whole:
        whole.setattr(mlic.chunks, "CHUNK_BYTES", LARGE)
        expected = threshold_metrics(chosen.astype(np.float64), targets, 0.5)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, rel=1e-12)
    assert metrics["labels_per_image"] == pytest.approx(chosen.sum(axis=1).mean())
    assert metrics["empty_images"] == 0.0


def test_non_finite_score_is_found_in_a_later_chunk(monkeypatch):
    logits, targets = random_data()
    logits[17, 9] = np.inf
    monkeypatch.setattr(mlic.chunks, "CHUNK_BYTES", 4000)
    with pytest.raises(DataError, match=r"score\[17, 9\] is inf"):
        average_precision(logits, targets)
    bad = targets.copy()
    bad[5, 11] = 2
    with pytest.raises(DataError, match="-1"):
        threshold_metrics(np.zeros_like(logits), bad)


def test_score_rows_grow_and_spill_to_a_file(tmp_path, monkeypatch):
    import mlic.engine.score_rows as score_rows
    monkeypatch.setattr(score_rows, "MEMMAP_BYTES", 100)
    rows = ScoreRows(3, np.float32, tmp_path / "logits.npy")  # fewer rows expected than given
    batches = [np.full((4, 5), i, dtype=np.float32) for i in range(3)]
    for batch in batches:
        rows.append(batch)
    np.testing.assert_array_equal(rows.array(), np.concatenate(batches))
    assert isinstance(rows.data, np.memmap) and rows.array().dtype == np.float32
    in_memory = ScoreRows(12, np.int8)
    in_memory.append(np.ones((12, 2), dtype=np.int8))
    assert not isinstance(in_memory.data, np.memmap) and in_memory.array().shape == (12, 2)


class LinearScorer(torch.nn.Module):
    """The two calls predict_scores makes of a model: logits of a batch, probabilities of them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, states=None):
        return self.fc(x)

    def probabilities(self, logits):
        return torch.sigmoid(logits)


def test_predict_scores_spills_to_the_given_folder(tmp_path, monkeypatch):
    import mlic.engine.score_rows as score_rows
    monkeypatch.setattr(score_rows, "MEMMAP_BYTES", 10)
    model = LinearScorer()
    images = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 2, (10, 3), generator=torch.Generator().manual_seed(1))
    loader = [(images[i:i + 4], targets[i:i + 4]) for i in range(0, 10, 4)]
    scores = predict_scores(model, loader, torch.device("cpu"), progress=False, folder=tmp_path)
    assert (tmp_path / "logits.npy").is_file() and isinstance(scores.logits, np.memmap)
    with torch.no_grad():
        logits = model(images)
    np.testing.assert_array_equal(scores.logits, logits.numpy())
    np.testing.assert_array_equal(scores.probabilities, torch.sigmoid(logits).numpy())
    np.testing.assert_array_equal(scores.targets, targets.numpy())


def test_metrics_report_memory_stays_bounded_on_float32():
    """20 k x 2 000 float32 scores (160 MB each): a float64 copy alone would be 320 MB."""
    rng = np.random.default_rng(0)
    n, c = 20_000, 2_000
    targets = (rng.random((n, c), dtype=np.float32) < 0.02).astype(np.int8)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    logits += targets
    probabilities = 1 / (1 + np.exp(-logits))
    tracemalloc.start()
    try:
        report = metrics_report(probabilities, targets, [str(k) for k in range(c)], ranking=logits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0 < report["mAP"] < 1
    assert peak < 200e6, f"metrics_report used {peak / 1e6:.0f} MB beyond its inputs"


def test_eval_of_a_large_split_goes_through_files_in_the_run_and_removes_them(tiny_run_copy,
                                                                               monkeypatch):
    """A split over ``MEMMAP_BYTES`` is scored into memory-mapped files in the run folder: the same
    report as in memory, and no file left afterwards."""
    import mlic.engine.score_rows as score_rows
    from mlic.evaluation import SCORES_DIR, evaluate
    in_memory = evaluate(tiny_run_copy, num_workers=0, progress=False)
    spilled = []
    real_open = np.lib.format.open_memmap
    monkeypatch.setattr(score_rows, "MEMMAP_BYTES", 0)
    monkeypatch.setattr(np.lib.format, "open_memmap",
                        lambda path, **kw: spilled.append(path) or real_open(path, **kw))
    through_files = evaluate(tiny_run_copy, num_workers=0, progress=False)
    assert [p.name for p in spilled] == ["probabilities.npy", "logits.npy"]
    assert all(p.parent == tiny_run_copy / SCORES_DIR for p in spilled)
    assert not (tiny_run_copy / SCORES_DIR).exists()
    assert through_files == in_memory


@pytest.mark.parametrize("chunk", [SMALL, LARGE])
def test_positives_counted_by_chunks(monkeypatch, chunk):
    from mlic.decisions import positives_per_class, positives_per_image
    _, targets = random_data(seed=5)
    monkeypatch.setattr(mlic.chunks, "CHUNK_BYTES", chunk)
    np.testing.assert_array_equal(positives_per_class(targets), (targets == 1).sum(axis=0))
    assert positives_per_image(targets) == float((targets == 1).sum(axis=1).mean())
    assert positives_per_image(targets[:0]) == 0.0
