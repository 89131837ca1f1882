"""Which labels come together in the training data, and which the model mixes up, for the report.

Co-occurrence: the pairs of labels most often positive on the same training image, and a heat map
of P(column | row) over the most frequent labels. Confusions: on the evaluated split, pairs (a, b)
where a positive a was missed while b was predicted without being there, on the same image: the
model saw b where a was. Both count in a matrix over at most ``MAX_LABELS`` labels (the most
frequent, or those with the most errors), so memory stays bounded with thousands of labels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mlic.decisions import decide
from mlic.figures import e, figure, plain_ticks, png

MAX_LABELS = 2000  # a pair matrix of 2000 x 2000 float32 is 16 MB
HEAT_LABELS, PAIRS = 20, 15


def pair_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(C, C): images where label i is set in ``a`` and label j in ``b`` (both (N, C) booleans,
    dense or scipy sparse), as a sparse product: an image has a few labels of thousands, so this
    is fast on large sets."""
    from scipy import sparse
    product = sparse.csr_matrix(a, dtype=np.float32).T @ sparse.csr_matrix(b, dtype=np.float32)
    return product.toarray()


def top_columns(weights: np.ndarray, limit: int = MAX_LABELS) -> np.ndarray:
    return np.sort(np.argsort(-weights, kind="stable")[:limit])


def training_pairs(data) -> tuple[np.ndarray, np.ndarray]:
    """(kept label indices, their pair counts): the training labels' co-occurrence over the
    ``MAX_LABELS`` most frequent labels; the diagonal holds each label's count. ``data``: a
    LabelTable (read sparsely, never as a dense matrix) or its targets."""
    from mlic.data.stats import positives_matrix
    positive = positives_matrix(data)
    keep = top_columns(np.asarray(positive.sum(axis=0)).ravel())
    kept = positive[:, keep]
    return keep, pair_counts(kept, kept)


def cooccurrence_section(keep: np.ndarray, counts: np.ndarray, labels: Sequence[str]
                         ) -> tuple[str, bytes | None]:
    """The table of the most frequent pairs and the heat map (PNG), from ``training_pairs``."""
    names = [labels[i] for i in keep]
    singles = np.diag(counts).copy()
    upper = np.triu(counts, 1)
    pairs = [(int(upper[i, j]), i, j) for i, j in zip(*np.unravel_index(
        np.argsort(-upper, axis=None, kind="stable")[:PAIRS], upper.shape)) if upper[i, j] > 0]
    rows = "".join(
        f"<tr><td>{e(names[i])}</td><td>{e(names[j])}</td><td class=\"n\">{n}</td>"
        f"<td class=\"n\">{100 * n / singles[i]:.1f}</td><td class=\"n\">{100 * n / singles[j]:.1f}"
        f"</td></tr>" for n, i, j in pairs)
    table = ("<table><tr><th>label a</th><th>label b</th><th>images with both</th>"
             "<th>% of a's</th><th>% of b's</th></tr>" + rows + "</table>") if rows else (
        "<p>No two labels share a training image.</p>")
    top = np.argsort(-singles, kind="stable")[:HEAT_LABELS]
    if len(top) < 2:
        return table, None
    share = counts[np.ix_(top, top)] / np.maximum(singles[top][:, None], 1)
    np.fill_diagonal(share, np.nan)
    short = [str(names[i])[:20] for i in top]
    cells = max(0.3 * len(top), 2.4)  # inches for the matrix; room around it for the names
    width, height = 1.5 + cells + 1.1, 0.6 + cells + 1.1
    fig, (ax,) = figure(width, height, 1)
    fig.subplots_adjust(left=1.5 / width, right=(1.5 + cells) / width, bottom=1.1 / height,
                        top=(1.1 + cells) / height)
    shown = ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(top)), short, rotation=90, fontsize=7)
    ax.set_yticks(range(len(top)), short, fontsize=7)
    plain_ticks(ax)
    ax.set_title(f"P(column | row), {len(top)} most\nfrequent training labels", fontsize=9)
    fig.colorbar(shown, cax=fig.add_axes(((1.65 + cells) / width, 1.1 / height, 0.15 / width,
                                          cells / height)))
    return table, png(fig)


def confusions_table(probabilities: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
                     labels: Sequence[str], min_labels: int = 1) -> str:
    """The pairs (missed a, false b) most often on the same image, under the model's decision
    rule (``mlic.decisions``)."""
    predicted = decide(probabilities, thresholds, min_labels)
    missed = ~predicted & (targets == 1)
    false = predicted & (targets == 0)
    keep = top_columns(missed.sum(axis=0) + false.sum(axis=0))
    counts = pair_counts(missed[:, keep], false[:, keep])
    np.fill_diagonal(counts, 0)
    misses = missed[:, keep].sum(axis=0)
    best = np.argsort(-counts, axis=None, kind="stable")[:PAIRS]
    rows = "".join(
        f"<tr><td>{e(labels[keep[i]])}</td><td>{e(labels[keep[j]])}</td>"
        f"<td class=\"n\">{int(counts[i, j])}</td><td class=\"n\">"
        f"{100 * counts[i, j] / max(misses[i], 1):.1f}</td></tr>"
        for i, j in zip(*np.unravel_index(best, counts.shape)) if counts[i, j] > 0)
    if not rows:
        return "<p>No image has both a missed label and a false one.</p>"
    return ("<table><tr><th>missed (true) label</th><th>predicted instead</th><th>images</th>"
            "<th>% of its misses</th></tr>" + rows + "</table>")
