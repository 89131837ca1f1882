"""Multi-label evaluation metrics: mAP, CP/CR/CF1/OP/OR/OF1 and per-class threshold tuning.

Pure numpy. ``scores`` is an (N, C) array of finite real numbers (probabilities, or logits: only the
thresholds care about the scale); ``targets`` is an (N, C) array of 1 (positive), 0 (negative) and -1
(unknown). Unknown entries are dropped everywhere: they are neither ranked, nor predicted, nor counted
as ground truth. Inputs are checked once, at each public function, and bad ones raise ``DataError``.

Memory stays bounded at any size: inputs are not copied whole (float32 scores stay float32); each
metric works on one chunk of classes at a time, in float64 there (``mlic.chunks``), so the figures
are those of a float64 computation over the whole array.

Conventions follow the reference codes (ASL, ML-Decoder, deep-object-reid, ML-GCN, Query2Label, C-Tran;
compared in docs/metrics.md); where sources disagree, the choice made here is stated in the
function's docstring.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from mlic.chunks import class_chunks
from mlic.errors import ConfigError, DataError

__all__ = ["MAPResult", "ClassPRF", "average_precision", "mean_average_precision",
           "per_class_prf", "prf_from_counts", "summarise_prf", "threshold_metrics",
           "tune_thresholds"]


@dataclass(frozen=True)
class MAPResult:
    """Mean average precision.

    ``per_class`` is NaN for the classes in ``empty_classes`` (no known positive), whatever ``empty``
    mode ``map`` was computed with.
    """

    map: float
    per_class: np.ndarray
    empty_classes: list[int]


@dataclass(frozen=True)
class ClassPRF:
    """Per-class counts at a threshold and the precision, recall and F1 made from them, all (C,).

    ``recall`` and ``f1`` are NaN for classes with no known positive (``n_positive == 0``): neither is
    defined there. ``precision`` is 0 where nothing is predicted (``n_predicted == 0``), the sklearn
    ``zero_division=0`` / ML-GCN convention.
    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    n_correct: np.ndarray    # Nc: known positives predicted positive
    n_predicted: np.ndarray  # Np: known entries predicted positive
    n_positive: np.ndarray   # Ng: known positives


def _check(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N, C) scores and targets; return them as arrays, not copied when they already are
    (full-scale scores are gigabytes): the metrics convert one chunk at a time (``mlic.chunks``)."""
    try:
        s = np.asarray(scores)
        if s.dtype.kind not in "biuf":  # strings, objects: as numbers, or the error below
            s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"scores must be an array of real numbers: {exc}") from None
    t = np.asarray(targets)
    if s.ndim != 2:
        raise DataError(f"scores must be 2-D (samples, classes), got shape {s.shape}")
    if t.shape != s.shape:
        raise DataError(f"scores have shape {s.shape} but targets have shape {t.shape}")
    if t.dtype.kind not in "biuf":
        raise DataError("targets must be 1 (positive), 0 (negative) or -1 (unknown)")
    for cols in class_chunks(*s.shape):
        part = s[:, cols]
        if s.dtype.kind == "f" and not np.isfinite(part).all():
            row, col = np.argwhere(~np.isfinite(part))[0]
            raise DataError(f"scores must be finite; score[{row}, {cols.start + col}] is "
                            f"{float(part[row, col])}")
        if not np.isin(t[:, cols], (-1, 0, 1)).all():
            raise DataError("targets must be 1 (positive), 0 (negative) or -1 (unknown)")
    return s, t


def _class_rows(s: np.ndarray, t: np.ndarray, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """The classes ``cols`` as rows: float64 scores and int8 targets, (len(cols), N) each,
    contiguous so that each class is read in one run (a column of the (N, C) input is strided).
    float64 is exact for float32 input, so the ranking and its ties are those of the input."""
    return (np.array(s[:, cols].T, dtype=np.float64, order="C"),
            np.array(t[:, cols].T, dtype=np.int8, order="C"))


def _ranked(sk: np.ndarray, tk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Known scores of one class (scores ``sk``, targets ``tk``) sorted descending and whether
    each is a positive.

    The sort is stable, so tied scores keep their sample order and results are deterministic.
    """
    known = tk >= 0
    if not known.all():
        sk, tk = sk[known], tk[known]
    order = np.argsort(-sk, kind="stable")
    return sk[order], tk[order] == 1


def average_precision(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Non-interpolated average precision of each class, shape (C,).

    AP_k is the mean, over the known positives of class k, of the precision within the top r known
    entries, r being the positive's rank (the ASL / ML-Decoder / DOR formula). Ties are not grouped:
    they are ranked in sample order. Classes with no known positive get NaN.
    """
    s, t = _check(scores, targets)
    return _average_precision(s, t)


def _average_precision(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    ap = np.full(s.shape[1], np.nan)
    for cols in class_chunks(*s.shape):
        sc, tc = _class_rows(s, t, cols)
        for j in range(len(sc)):
            _, positive = _ranked(sc[j], tc[j])
            if positive.any():
                ranks = np.flatnonzero(positive) + 1  # 1-based rank of each positive
                ap[cols.start + j] = np.mean(np.arange(1, len(ranks) + 1) / ranks)
    return ap


def mean_average_precision(scores: ArrayLike, targets: ArrayLike, empty: str = "skip") -> MAPResult:
    """Mean of the per-class AP, in [0, 1].

    Classes with no known positive have no AP. ``empty="skip"`` (default) averages over the other
    classes only; ``empty="zero"`` counts them as AP 0, the ASL/DOR convention (comparable with their
    published numbers, but it penalises a model for labels the test set lacks). Either way they are
    listed in ``empty_classes``. If no class has a positive, ``map`` is NaN.
    """
    if empty not in ("skip", "zero"):
        raise ConfigError(f"empty must be 'skip' or 'zero', got {empty!r}")
    ap = average_precision(scores, targets)
    empty_classes = np.flatnonzero(np.isnan(ap)).tolist()
    if len(empty_classes) == len(ap):
        value = float("nan")
    elif empty == "skip":
        value = float(np.nanmean(ap))
    else:
        value = float(np.nan_to_num(ap, nan=0.0).mean())
    return MAPResult(map=value, per_class=ap, empty_classes=empty_classes)


def _thresholds(thresholds: ArrayLike, num_classes: int) -> np.ndarray:
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim > 1 or (th.ndim == 1 and th.shape[0] != num_classes):
        raise DataError(f"thresholds must be a number or one per class ({num_classes}), "
                        f"got shape {th.shape}")
    if np.isnan(th).any():
        raise DataError("thresholds must not be NaN")
    return th


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def per_class_prf(scores: ArrayLike, targets: ArrayLike, thresholds: ArrayLike = 0.5) -> ClassPRF:
    """Per-class precision, recall and F1 when ``score >= threshold`` predicts a positive.

    ``thresholds`` is one number for all classes or one per class (C,). Use 0.5 on probabilities,
    0 on logits (ML-GCN's rule). See :class:`ClassPRF` for the zero-division conventions.
    """
    s, t = _check(scores, targets)
    return _per_class_prf(s, t, _thresholds(thresholds, s.shape[1]))


def _per_class_prf(s: np.ndarray, t: np.ndarray, th: np.ndarray) -> ClassPRF:
    nc, np_, ng = (np.zeros(s.shape[1], dtype=np.int64) for _ in range(3))
    for cols in class_chunks(*s.shape):
        sc = np.asarray(s[:, cols], dtype=np.float64)
        tc = t[:, cols]
        positive = tc == 1
        predicted = (sc >= (th if th.ndim == 0 else th[cols])) & (tc >= 0)  # unknown: never
        nc[cols] = (predicted & positive).sum(axis=0)
        np_[cols] = predicted.sum(axis=0)
        ng[cols] = positive.sum(axis=0)
    return prf_from_counts(nc, np_, ng)


def prf_from_counts(n_correct: np.ndarray, n_predicted: np.ndarray,
                    n_positive: np.ndarray) -> ClassPRF:
    """Per-class precision, recall and F1 of per-class counts (Nc, Np, Ng), see :class:`ClassPRF`."""
    nc, np_, ng = n_correct, n_predicted, n_positive
    precision = _safe_div(nc, np_)
    recall = np.where(ng > 0, _safe_div(nc, ng), np.nan)
    f1 = np.where(ng > 0, _safe_div(2 * precision * recall, precision + recall), np.nan)
    return ClassPRF(precision, recall, f1, nc, np_, ng)


def _harmonic(a: float, b: float) -> float:
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def threshold_metrics(scores: ArrayLike, targets: ArrayLike,
                      thresholds: ArrayLike = 0.5) -> dict[str, float]:
    """Class-averaged and overall precision/recall/F1 at fixed thresholds (``score >= threshold``).

    Keys, all in [0, 1]:

    * ``CP``, ``CR``: mean over classes of the per-class precision and recall;
    * ``CF1``: harmonic mean of CP and CR (ML-GCN / C-Tran definition; 0 if both are 0);
    * ``mean_F1``: mean over classes of the per-class F1 (what ASL's validate.py calls CF1);
    * ``OP``, ``OR``, ``OF1``: the same pooled over all classes (sum Nc / sum Np, sum Nc / sum Ng).

    The class means (CP, CR, mean_F1) run over the classes with at least one known positive: recall
    and F1 are undefined for the others, and leaving them out of CP too keeps CP, CR and CF1 about one
    set of classes. Their false positives still count in OP. With every class having positives, CP and
    CR equal sklearn's macro precision/recall with ``zero_division=0``. Where a quantity has no
    defined value (no known positive anywhere) it is NaN; OP is 0 when nothing is predicted.
    """
    s, t = _check(scores, targets)
    return summarise_prf(_per_class_prf(s, t, _thresholds(thresholds, s.shape[1])))


def summarise_prf(prf: ClassPRF) -> dict[str, float]:
    """The :func:`threshold_metrics` of per-class counts (its docstring defines the keys)."""
    scored = prf.n_positive > 0
    nan = float("nan")
    cp = float(prf.precision[scored].mean()) if scored.any() else nan
    cr = float(prf.recall[scored].mean()) if scored.any() else nan
    mean_f1 = float(prf.f1[scored].mean()) if scored.any() else nan
    nc, np_, ng = prf.n_correct.sum(), prf.n_predicted.sum(), prf.n_positive.sum()
    op = float(nc / np_) if np_ > 0 else 0.0
    or_ = float(nc / ng) if ng > 0 else nan
    return {"CP": cp, "CR": cr, "CF1": _harmonic(cp, cr), "OP": op, "OR": or_,
            "OF1": _harmonic(op, or_), "mean_F1": mean_f1}


def tune_thresholds(scores: ArrayLike, targets: ArrayLike, default: float = 0.5) -> np.ndarray:
    """Per-class thresholds that maximise each class's F1 on the given data, shape (C,).

    For each class, every distinct known score is tried as a threshold (an exact sweep: F1 only changes
    at those values) and the best one is returned, so ``score >= threshold`` reproduces the best
    decision on this data. F1 = 2 Nc / (Np + Ng) has no 0/0 for a class with positives. On ties the
    highest threshold wins (fewest predictions for the same F1).

    A class with no known positive has F1 = 0 at every threshold, so the data say nothing about where
    to cut; it gets ``default`` (0.5 suits probabilities; pass 0 for logits) rather than a threshold
    that would never predict it.

    Tune on data the model did not train on, or on an un-augmented pass (docs/metrics.md,
    "Threshold tuning").
    """
    s, t = _check(scores, targets)
    out = np.full(s.shape[1], float(default))
    for cols in class_chunks(*s.shape):
        sc, tc = _class_rows(s, t, cols)
        for j in range(len(sc)):
            sk, positive = _ranked(sc[j], tc[j])
            if not positive.any():
                continue
            # Cutting at a distinct value predicts its whole tie group: the last index of each group.
            last = np.flatnonzero(np.append(sk[1:] != sk[:-1], True))
            f1 = 2 * np.cumsum(positive)[last] / (last + 1 + positive.sum())
            out[cols.start + j] = sk[last[np.argmax(f1)]]
    return out
