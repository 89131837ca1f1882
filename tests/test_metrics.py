"""Metrics against hand-computed values and sklearn (conventions: docs/metrics.md)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from mlic.errors import ConfigError, DataError
from mlic.metrics import (average_precision, mean_average_precision, per_class_prf,
                          threshold_metrics, tune_thresholds)


def random_data(seed: int, n: int = 60, c: int = 5, unknown: float = 0.15):
    """Untied scores in [0, 1) and targets with some -1; every class has known positives."""
    rng = np.random.default_rng(seed)
    scores = rng.permutation(n * c).reshape(n, c) / (n * c)  # all distinct
    targets = (rng.random((n, c)) < 0.3).astype(np.int8)
    targets[rng.random((n, c)) < unknown] = -1
    targets[:2] = 1  # at least two positives per class
    targets[2:4] = 0
    return scores, targets


@pytest.mark.parametrize("seed", range(5))
def test_ap_matches_sklearn_on_untied_scores(seed):
    scores, targets = random_data(seed)
    ap = average_precision(scores, targets)
    for k in range(scores.shape[1]):
        known = targets[:, k] >= 0
        want = average_precision_score(targets[known, k], scores[known, k])
        assert ap[k] == pytest.approx(want, rel=1e-12)
    assert mean_average_precision(scores, targets).map == pytest.approx(np.mean(ap))


def test_ap_hand_computed_with_unknown_and_stable_ties():
    scores = np.array([[0.9], [0.85], [0.8], [0.7], [0.6], [0.5]])
    targets = np.array([[1], [-1], [0], [1], [0], [1]])
    # positives at known ranks 1, 3, 5: precisions 1, 2/3, 3/5
    assert average_precision(scores, targets)[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # ties keep sample order: a positive after a tied negative ranks second
    tied = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert average_precision(tied, np.array([[0, 1], [1, 0]])).tolist() == [0.5, 1.0]


def test_empty_classes_skip_and_zero():
    scores = np.array([[0.9, 0.2, 0.3], [0.1, 0.8, 0.7], [0.5, 0.4, 0.6]])
    targets = np.array([[1, 0, 0], [0, 1, -1], [0, 0, 0]])  # class 2 has no known positive
    skip = mean_average_precision(scores, targets)
    assert skip.empty_classes == [2]
    assert np.isnan(skip.per_class[2])
    assert skip.map == pytest.approx(1.0)
    zero = mean_average_precision(scores, targets, empty="zero")
    assert zero.map == pytest.approx(2 / 3) and zero.empty_classes == [2]
    none = mean_average_precision(scores, np.zeros((3, 3), dtype=int))
    assert np.isnan(none.map) and none.empty_classes == [0, 1, 2]
    with pytest.raises(ConfigError):
        mean_average_precision(scores, targets, empty="drop")


# Four samples, three classes, threshold 0.5 (scores equal to 0.5 count as predicted).
TINY_SCORES = np.array([[0.9, 0.2, 0.6],
                        [0.4, 0.7, 0.1],
                        [0.8, 0.6, 0.3],
                        [0.3, 0.1, 0.5]])
TINY_TARGETS = np.array([[1, 0, -1],
                         [1, 1, 0],
                         [0, -1, 0],
                         [0, 1, 1]])
# class 0: Np 2, Ng 2, Nc 1 -> P 1/2, R 1/2.  class 1 (row 2 unknown): Np 1, Ng 2, Nc 1 -> P 1, R 1/2.
# class 2 (row 0 unknown, row 3 at exactly 0.5): Np 1, Ng 1, Nc 1 -> P 1, R 1.


def test_threshold_metrics_hand_computed():
    prf = per_class_prf(TINY_SCORES, TINY_TARGETS, 0.5)
    np.testing.assert_allclose(prf.precision, [0.5, 1, 1])
    np.testing.assert_allclose(prf.recall, [0.5, 0.5, 1])
    np.testing.assert_allclose(prf.f1, [0.5, 2 / 3, 1])
    m = threshold_metrics(TINY_SCORES, TINY_TARGETS)
    cp, cr = 2.5 / 3, 2 / 3
    assert m["CP"] == pytest.approx(cp)
    assert m["CR"] == pytest.approx(cr)
    assert m["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert m["mean_F1"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["OP"] == pytest.approx(3 / 4)
    assert m["OR"] == pytest.approx(3 / 5)
    assert m["OF1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_class_without_positives_is_left_out_of_class_means_but_not_of_op():
    scores = np.hstack([TINY_SCORES, [[0.9], [0.1], [0.1], [0.1]]])  # one false positive
    targets = np.hstack([TINY_TARGETS, np.zeros((4, 1), dtype=int)])
    base, m = threshold_metrics(TINY_SCORES, TINY_TARGETS), threshold_metrics(scores, targets)
    for key in ("CP", "CR", "CF1", "mean_F1", "OR"):
        assert m[key] == pytest.approx(base[key])
    assert m["OP"] == pytest.approx(3 / 5)
    prf = per_class_prf(scores, targets)
    assert prf.precision[3] == 0 and np.isnan(prf.recall[3]) and np.isnan(prf.f1[3])


def test_per_class_thresholds_and_unknowns_excluded():
    # a per-class threshold vector equal to the scalar gives the same result
    assert threshold_metrics(TINY_SCORES, TINY_TARGETS, np.full(3, 0.5)) == \
        threshold_metrics(TINY_SCORES, TINY_TARGETS, 0.5)
    # whatever an unknown entry's score is, nothing changes
    moved = TINY_SCORES.copy()
    moved[TINY_TARGETS == -1] = 1 - moved[TINY_TARGETS == -1]
    assert threshold_metrics(moved, TINY_TARGETS) == threshold_metrics(TINY_SCORES, TINY_TARGETS)
    # a threshold of 0.65 for class 2 drops its prediction at 0.5
    prf = per_class_prf(TINY_SCORES, TINY_TARGETS, [0.5, 0.5, 0.65])
    assert prf.n_predicted.tolist() == [2, 1, 0] and prf.precision[2] == 0


@pytest.mark.parametrize("seed", range(4))
def test_threshold_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random((80, 6))
    targets = (rng.random((80, 6)) < 0.4).astype(int)
    th = rng.uniform(0.3, 0.7, size=6)
    pred = (scores >= th).astype(int)
    assert targets.sum(0).min() > 0 and pred.sum(0).min() > 0
    m = threshold_metrics(scores, targets, th)
    kw = dict(zero_division=0)
    assert m["CP"] == pytest.approx(precision_score(targets, pred, average="macro", **kw))
    assert m["CR"] == pytest.approx(recall_score(targets, pred, average="macro", **kw))
    assert m["mean_F1"] == pytest.approx(f1_score(targets, pred, average="macro", **kw))
    assert m["OP"] == pytest.approx(precision_score(targets, pred, average="micro", **kw))
    assert m["OR"] == pytest.approx(recall_score(targets, pred, average="micro", **kw))
    assert m["OF1"] == pytest.approx(f1_score(targets, pred, average="micro", **kw))
    assert all(0 <= v <= 1 for v in m.values())


def brute_force_best_f1(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Best F1 over every candidate threshold, and the highest threshold reaching it."""
    best, best_t = -1.0, None
    for thr in sorted(set(s.tolist()), reverse=True):
        pred = s >= thr
        f1 = f1_score(y, pred, zero_division=0)
        if f1 > best + 1e-12:
            best, best_t = f1, thr
    return best, best_t


@pytest.mark.parametrize("seed", range(4))
def test_tune_thresholds_matches_brute_force(seed):
    scores, targets = random_data(seed, n=40, c=4)
    scores = np.round(scores, 1)  # many ties, to test tie groups
    th = tune_thresholds(scores, targets)
    at_half = per_class_prf(scores, targets, 0.5).f1
    tuned = per_class_prf(scores, targets, th).f1
    for k in range(scores.shape[1]):
        known = targets[:, k] >= 0
        best, best_t = brute_force_best_f1(scores[known, k], targets[known, k])
        assert tuned[k] == pytest.approx(best)
        assert th[k] == best_t
        assert tuned[k] >= at_half[k] - 1e-12


def test_tune_thresholds_class_without_positives_gets_default():
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.4, 0.3]])
    targets = np.array([[1, 0], [0, -1], [0, 0]])
    assert tune_thresholds(scores, targets).tolist() == [0.9, 0.5]
    assert tune_thresholds(scores, targets, default=0.0)[1] == 0.0


def test_input_validation():
    s, t = np.zeros((3, 2)), np.zeros((3, 2), dtype=int)
    with pytest.raises(DataError, match="shape"):
        average_precision(s, np.zeros((3, 3)))
    bad = s.copy()
    bad[1, 1] = np.nan
    with pytest.raises(DataError, match="finite"):
        mean_average_precision(bad, t)
    with pytest.raises(DataError, match="finite"):
        threshold_metrics(np.full((3, 2), np.inf), t)
    with pytest.raises(DataError, match="-1"):
        tune_thresholds(s, np.full((3, 2), 2))
    with pytest.raises(DataError, match="2-D"):
        average_precision(np.zeros(3), np.zeros(3))
    with pytest.raises(DataError, match="thresholds"):
        per_class_prf(s, t, [0.5, 0.5, 0.5])
