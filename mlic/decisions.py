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

from mlic.chunks import class_chunks, row_chunks
from mlic.errors import DataError
from mlic.metrics import prf_from_counts, summarise_prf, tune_thresholds

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
    sweep over the scores (OF1 = 2 Nc / (Np + Ng) only changes there).

    Only the scores of positives are tried: below one of them and down to the next, a lower cut
    adds negatives only, so the best cut is at a positive's score (the highest on ties). The number
    of known entries at or above each is counted one class chunk at a time (``mlic.chunks``): no
    sort or copy of all N x C scores."""
    p, t = np.asarray(probabilities), np.asarray(targets)
    parts = [np.asarray(p[:, cols], dtype=np.float64)[t[:, cols] == 1]
             for cols in class_chunks(*p.shape)]
    candidates = np.unique(np.concatenate(parts)) if parts else np.empty(0)  # ascending
    if not candidates.size:
        return 0.5
    # Entries in bin b (searchsorted, right) are >= candidates[:b]: a reversed cumulative sum.
    predicted = np.zeros(len(candidates) + 1, dtype=np.int64)
    correct = np.zeros(len(candidates) + 1, dtype=np.int64)
    for cols in class_chunks(*p.shape):
        pc, tc = np.asarray(p[:, cols], dtype=np.float64), t[:, cols]
        for counts, chosen in ((predicted, tc >= 0), (correct, tc == 1)):
            bins = np.searchsorted(candidates, pc[chosen], side="right")
            counts += np.bincount(bins, minlength=len(counts))
    n_predicted = np.cumsum(predicted[::-1])[:-1]  # at or above each candidate, highest first
    n_correct = np.cumsum(correct[::-1])[:-1]
    f1 = 2 * n_correct / (n_predicted + correct.sum())
    return float(candidates[::-1][np.argmax(f1)])


def choose_thresholds(probabilities: ArrayLike, targets: ArrayLike,
                      min_positives: int = MIN_POSITIVES) -> tuple[np.ndarray, float]:
    """Per-class F1-optimal thresholds, the global one for classes with fewer than
    ``min_positives`` known positives; returns (thresholds (C,), the global threshold)."""
    t = np.asarray(targets)
    fallback = global_threshold(probabilities, t)
    tuned = tune_thresholds(probabilities, t, default=fallback)
    tuned[positives_per_class(t) < min_positives] = fallback
    return tuned, fallback


def positives_per_class(targets: ArrayLike) -> np.ndarray:
    """Known positives of each class, (C,), counted a chunk at a time (no full-size mask)."""
    t = np.asarray(targets)
    counts = np.zeros(t.shape[1], dtype=np.int64)
    for cols in class_chunks(*t.shape):
        counts[cols] = (t[:, cols] == 1).sum(axis=0)
    return counts


def positives_per_image(targets: ArrayLike) -> float:
    """Mean number of known positives per image (0 with no image), counted a chunk of images at
    a time (no full-size mask)."""
    t = np.asarray(targets)
    total = sum(int((t[rows] == 1).sum()) for rows in row_chunks(*t.shape))
    return total / len(t) if len(t) else 0.0


def rule_metrics(probabilities: ArrayLike, targets: ArrayLike, thresholds: ArrayLike = 0.5,
                 min_labels: int = 1) -> dict[str, float]:
    """What a rule gives on labelled data: CP/CR/CF1, OP/OR/OF1, mean per-class F1 (in [0, 1]),
    the mean number of labels per image and the share of images left with none.

    The labels are decided a chunk of images at a time (an image's floor needs all its classes)
    and only their counts kept."""
    p, t = np.asarray(probabilities), np.asarray(targets)
    if t.shape != p.shape:
        raise DataError(f"scores have shape {p.shape} but targets have shape {t.shape}")
    nc, np_, ng = (np.zeros(t.shape[1], dtype=np.int64) for _ in range(3))
    labels, empty = 0, 0
    for rows in row_chunks(*t.shape):
        chosen, tr = decide(p[rows], thresholds, min_labels), t[rows]
        if not np.isin(tr, (-1, 0, 1)).all():
            raise DataError("targets must be 1 (positive), 0 (negative) or -1 (unknown)")
        positive = tr == 1
        predicted = chosen & (tr >= 0)  # an unknown entry is never a prediction
        nc += (predicted & positive).sum(axis=0)
        np_ += predicted.sum(axis=0)
        ng += positive.sum(axis=0)
        per_image = chosen.sum(axis=1)
        labels += int(per_image.sum())
        empty += int((per_image == 0).sum())
    out = summarise_prf(prf_from_counts(nc, np_, ng))
    out["labels_per_image"] = labels / len(t) if len(t) else 0.0
    out["empty_images"] = empty / len(t) if len(t) else 0.0
    return out


def describe_rule(thresholds: Any, min_labels: int) -> str:
    """A rule in words, e.g. "per-class thresholds, at least 1 label per image"."""
    cut = f"threshold {float(thresholds):g}" if np.ndim(thresholds) == 0 else "per-class thresholds"
    floor = f", at least {min_labels} label{'s' if min_labels > 1 else ''} per image" \
        if min_labels > 0 else ""
    return cut + floor
