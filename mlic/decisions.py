"""Decisions: how a model's probabilities become labels.

A decision rule is a threshold per class (or one for all) and a floor on labels per image:
``min_labels=1`` gives an image whose scores are all below their thresholds its best-scoring label
anyway, so no image comes back empty unless the user asks for that (``min_labels=0``).

The default rule of a trained model (``mlic tune-thresholds``) is chosen on data it was not trained
on: each class gets the threshold that maximises its F1 there, except a class with fewer than
``MIN_POSITIVES`` positives, whose F1 curve is too noisy to cut on: it gets the one threshold that
maximises the overall F1 of all classes together. Tuned on the training images instead, the
thresholds fit what the model memorised: near-perfect F1 there, and many images left without a
label on new data (docs/metrics.md, "Decision thresholds").
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlic.metrics import threshold_metrics, tune_thresholds

MIN_POSITIVES = 20  # fewer: per-class cuts lost to the global one (benchmarks/results/decisions.md)


def decide(probabilities: ArrayLike, thresholds: ArrayLike = 0.5, min_labels: int = 1
           ) -> np.ndarray:
    """(N, C) bool: ``probability >= threshold``; with ``min_labels`` > 0, an image with fewer
    positive decisions also gets its best-scoring labels up to that many."""
    p = np.asarray(probabilities, dtype=np.float64)
    chosen = p >= np.asarray(thresholds, dtype=np.float64)
    if min_labels > 0 and p.size:
        short = chosen.sum(axis=1) < min_labels
        top = np.argsort(-p[short], axis=1, kind="stable")[:, :min_labels]
        rows = np.flatnonzero(short)[:, None]
        chosen[rows, top] = True
    return chosen


def global_threshold(probabilities: ArrayLike, targets: ArrayLike) -> float:
    """The one threshold that maximises the overall F1 (OF1) of all known entries together: an exact
    sweep over the distinct scores (OF1 = 2 Nc / (Np + Ng) only changes there)."""
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(targets)
    known = t >= 0
    scores, positive = p[known], t[known] == 1
    if not positive.any():
        return 0.5
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))  # end of each tie group
    f1 = 2 * np.cumsum(positive)[last] / (last + 1 + positive.sum())
    return float(scores[last[np.argmax(f1)]])


def choose_thresholds(probabilities: ArrayLike, targets: ArrayLike,
                      min_positives: int = MIN_POSITIVES) -> tuple[np.ndarray, float]:
    """Per-class F1-optimal thresholds, the global one for classes with fewer than
    ``min_positives`` known positives; returns (thresholds (C,), the global threshold)."""
    t = np.asarray(targets)
    fallback = global_threshold(probabilities, t)
    tuned = tune_thresholds(probabilities, t, default=fallback)
    few = (t == 1).sum(axis=0) < min_positives
    tuned[few] = fallback
    return tuned, fallback


def rule_metrics(probabilities: ArrayLike, targets: ArrayLike, thresholds: ArrayLike = 0.5,
                 min_labels: int = 1) -> dict[str, float]:
    """What a rule gives on labelled data: CP/CR/CF1, OP/OR/OF1, mean per-class F1 (in [0, 1]),
    the mean number of labels per image and the share of images left with none."""
    t = np.asarray(targets)
    chosen = decide(probabilities, thresholds, min_labels)
    # The decisions as 0/1 scores cut at 0.5: the metrics of exactly these labels.
    out = threshold_metrics(chosen.astype(np.float64), t, 0.5)
    out["labels_per_image"] = float(chosen.sum(axis=1).mean()) if len(chosen) else 0.0
    out["empty_images"] = float((chosen.sum(axis=1) == 0).mean()) if len(chosen) else 0.0
    return out


def describe_rule(thresholds: Any, min_labels: int) -> str:
    """A rule in words, e.g. "per-class thresholds, at least 1 label per image"."""
    cut = f"threshold {float(thresholds):g}" if np.ndim(thresholds) == 0 else "per-class thresholds"
    floor = f", at least {min_labels} label{'s' if min_labels > 1 else ''} per image" \
        if min_labels > 0 else ""
    return cut + floor
