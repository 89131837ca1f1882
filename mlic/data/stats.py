"""Label statistics of a ``LabelTable``: frequencies, co-occurrences and a readable report.

Every function takes a table or its ``targets`` matrix. Only positives (1) count as present:
an unknown (-1) entry is not evidence that the label is there.

Co-occurrence is one sparse product of the positives (N x C) with themselves: an image with k
positive labels adds k^2 counts, so the cost follows the labels present, not N x C^2.
``describe`` computes it once and reads only its non-zero pairs, so thousands of labels do not
make a dense C x C matrix there.
"""
from __future__ import annotations

import numpy as np

from mlic.data.table import POSITIVE, UNKNOWN, LabelTable


def positives_matrix(data: LabelTable | np.ndarray):
    """The positives as a scipy CSR matrix (N x C) of ones."""
    if isinstance(data, LabelTable):
        return data.positives.to_scipy()
    targets = np.asarray(data)
    if targets.ndim != 2:
        raise ValueError(f"targets must be a 2-D images x labels matrix, got shape {targets.shape}")
    from scipy import sparse
    return sparse.csr_matrix(targets == POSITIVE, dtype=np.float64)


def label_frequencies(data: LabelTable | np.ndarray) -> np.ndarray:
    """Number of images on which each label is positive."""
    if isinstance(data, LabelTable):
        return data.positives.per_column()
    return np.asarray(positives_matrix(data).sum(axis=0)).ravel().astype(np.int64)


def sparse_cooccurrence(data: LabelTable | np.ndarray):
    """C x C counts of images where labels i and j are both positive, as a scipy CSR matrix with
    sorted indices and no stored zeros; the diagonal is N_i."""
    positives = positives_matrix(data)
    # float64 products are exact for any count below 2**53 and keep scipy on its fast path.
    counts = (positives.T.tocsr() @ positives).tocsr()
    counts.eliminate_zeros()
    counts.sort_indices()
    return counts


def label_cooccurrence(data: LabelTable | np.ndarray) -> np.ndarray:
    """C x C counts of images where labels i and j are both positive; the diagonal is N_i."""
    return sparse_cooccurrence(data).toarray().astype(np.int64)


def conditional_cooccurrence(data: LabelTable | np.ndarray) -> np.ndarray:
    """P(j | i) = n_ij / N_i: row i, column j. Diagonal 0; a label never positive has a zero row."""
    counts = label_cooccurrence(data)
    totals = np.diag(counts).astype(np.float64)[:, None]
    prob = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    np.fill_diagonal(prob, 0.0)
    return prob


def describe(table: LabelTable, top: int = 20) -> str:
    """A plain-text report of a table's label statistics (``mlic data stats``)."""
    names = table.label_names
    n, c = len(table), table.num_labels
    lines = [f"source: {table.source or '-'}", f"images: {n}", f"labels: {c}"]
    lines += [f"note: {note}" for note in table.extra.get("notes", [])]
    if n == 0 or c == 0:
        return "\n".join(lines)
    positives = table.count(POSITIVE, axis=1)
    unknowns = table.count(UNKNOWN, axis=1)
    for what, per_image in (("positives", positives), ("unknowns", unknowns)):
        lines.append(f"{what} per image: mean {per_image.mean():.2f}, "
                     f"min {per_image.min()}, max {per_image.max()}")
    empty = int((positives == 0).sum())
    lines.append(f"images with no positive label: {empty} ({100 * empty / n:.1f}%)")
    freq = label_frequencies(table)
    never = [names[j] for j in np.flatnonzero(freq == 0)]
    if never:
        shown = ", ".join(never[:top]) + (", ..." if len(never) > top else "")
        lines.append(f"labels with no positive image: {len(never)} ({shown})")

    width = max(len(name) for name in names)
    lines.append(f"\nmost frequent labels (top {min(top, c)}):")
    # Stable sort on -freq: ties keep the table's label order, so the report is deterministic.
    for j in np.argsort(-freq, kind="stable")[:top]:
        lines.append(f"  {names[j]:<{width}}  {freq[j]:>8}  {100 * freq[j] / n:5.1f}%")

    counts = sparse_cooccurrence(table).tocoo()  # row-major, as np.nonzero of the dense matrix
    off_diagonal = counts.row != counts.col
    i_idx, j_idx = counts.row[off_diagonal], counts.col[off_diagonal]
    pair = counts.data[off_diagonal].astype(np.int64)
    prob = pair / freq[i_idx]  # freq is the diagonal: N_i > 0 wherever i has a pair
    # Strongest first; among equal probabilities the pair seen on more images is the surer one.
    order = np.lexsort((-pair, -prob))[:top]
    lines.append(f"\nstrongest co-occurrences P(j | i) (top {len(order)}):")
    for k in order:
        i, j = i_idx[k], j_idx[k]
        lines.append(f"  P({names[j]} | {names[i]}) = {prob[k]:.3f}  "
                     f"({pair[k]} of {freq[i]} images)")
    if not len(order):
        lines.append("  none: no two labels are positive on the same image")
    return "\n".join(lines)
