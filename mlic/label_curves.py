"""Precision-recall and F1-against-threshold curves of a few labels, for the run report.

The labels drawn are the weakest and the strongest by AP, and any the reader names; each curve
marks where the model's own threshold for that label (tuned, else the evaluation threshold) puts
it. Unknown targets (-1) are left out, as in every metric.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mlic.figures import figure, png

EACH_END = 3  # weakest and strongest labels drawn


def curve(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, ...]:
    """(thresholds, precision, recall, F1) at each distinct score, highest threshold first; a
    label without a positive has no curve (empty arrays)."""
    known = targets >= 0
    scores, positive = scores[known], targets[known] == 1
    if not positive.any():
        return tuple(np.empty(0) for _ in range(4))
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each run of ties
    hits = np.cumsum(positive)[last]
    precision = hits / (last + 1)
    recall = hits / positive.sum()
    f1 = np.where(hits > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return scores[last], precision, recall, f1


def drawn_labels(ap: dict[str, float | None], chosen: Sequence[str]) -> list[str]:
    scored = sorted((a, name) for name, a in ap.items() if a is not None)
    names = [n for _, n in scored[:EACH_END]] + [n for _, n in scored[::-1][:EACH_END]]
    return list(dict.fromkeys([*chosen, *names]))


def curves_figure(probabilities: np.ndarray, targets: np.ndarray, labels: Sequence[str],
                  names: Sequence[str], thresholds: np.ndarray, ap: dict[str, float | None]
                  ) -> bytes | None:
    """Two panels (precision against recall, F1 against the threshold) for ``names``; None when
    none of them has a positive."""
    index = {n: c for c, n in enumerate(labels)}
    fig, (left, right) = figure(11, 4.4, 2, left=0.7)
    drawn = 0
    for k, name in enumerate(n for n in names if n in index):
        c = index[name]
        at, precision, recall, f1 = curve(probabilities[:, c], targets[:, c])
        if not len(at):
            continue
        colour, short = f"C{k % 10}", str(name)[:24]
        ap_text = f" (AP {100 * ap[name]:.1f})" if ap.get(name) is not None else ""
        left.plot(recall, precision, color=colour, label=short + ap_text)
        right.plot(at, f1, color=colour)
        mine = min(np.searchsorted(-at, -thresholds[c], side="right") - 1, len(at) - 1)
        if mine >= 0:  # the last point at or above the model's threshold: what it decides
            left.plot(recall[mine], precision[mine], "o", color=colour, markersize=6)
            right.plot(at[mine], f1[mine], "o", color=colour, markersize=6)
        drawn += 1
    if not drawn:
        return None
    left.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
             title="precision against recall (dot: the model's threshold)")
    right.set(xlabel="threshold (probability)", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02),
              title="F1 against the threshold")
    legend = left.legend(fontsize=7, loc="lower left")
    for text in legend.get_texts():
        text.set_parse_math(False)  # a label with '$' is text, not a formula
    return png(fig)
