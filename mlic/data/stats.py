"""Label statistics of a ``LabelTable``: frequencies, co-occurrences and a readable report.

Every function takes a table or its ``targets`` matrix. Only positives (1) count as present:
an unknown (-1) entry is not evidence that the label is there.
"""
from __future__ import annotations

import numpy as np

from mlic.data.table import POSITIVE, UNKNOWN, LabelTable

_CHUNK = 1 << 16  # rows per block of the co-occurrence product, to bound memory on huge tables


def _targets(data: LabelTable | np.ndarray) -> np.ndarray:
    targets = data.targets if isinstance(data, LabelTable) else np.asarray(data)
    if targets.ndim != 2:
        raise ValueError(f"targets must be a 2-D images x labels matrix, got shape {targets.shape}")
    return targets


def label_frequencies(data: LabelTable | np.ndarray) -> np.ndarray:
    """Number of images on which each label is positive."""
    return (_targets(data) == POSITIVE).sum(axis=0, dtype=np.int64)


def label_cooccurrence(data: LabelTable | np.ndarray) -> np.ndarray:
    """C x C counts of images where labels i and j are both positive; the diagonal is N_i."""
    targets = _targets(data)
    counts = np.zeros((targets.shape[1],) * 2, dtype=np.float64)
    for start in range(0, len(targets), _CHUNK):
        # float64 keeps the BLAS speed and is exact for any count below 2**53.
        block = (targets[start:start + _CHUNK] == POSITIVE).astype(np.float64)
        counts += block.T @ block
    return counts.astype(np.int64)


def conditional_cooccurrence(data: LabelTable | np.ndarray) -> np.ndarray:
    """P(j | i) = n_ij / N_i: row i, column j. Diagonal 0; a label never positive has a zero row."""
    counts = label_cooccurrence(data)
    totals = np.diag(counts).astype(np.float64)[:, None]
    prob = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    np.fill_diagonal(prob, 0.0)
    return prob


def describe(table: LabelTable, top: int = 20) -> str:
    """A plain-text report of a table's label statistics (``mlic data stats``)."""
    targets, names = table.targets, table.label_names
    n, c = targets.shape
    lines = [f"source: {table.source or '-'}", f"images: {n}", f"labels: {c}"]
    if n == 0 or c == 0:
        return "\n".join(lines)
    positives = (targets == POSITIVE).sum(axis=1)
    unknowns = (targets == UNKNOWN).sum(axis=1)
    for what, per_image in (("positives", positives), ("unknowns", unknowns)):
        lines.append(f"{what} per image: mean {per_image.mean():.2f}, "
                     f"min {per_image.min()}, max {per_image.max()}")
    empty = int((positives == 0).sum())
    lines.append(f"images with no positive label: {empty} ({100 * empty / n:.1f}%)")
    freq = label_frequencies(targets)
    never = [names[j] for j in np.flatnonzero(freq == 0)]
    if never:
        shown = ", ".join(never[:top]) + (", ..." if len(never) > top else "")
        lines.append(f"labels with no positive image: {len(never)} ({shown})")

    width = max(len(name) for name in names)
    lines.append(f"\nmost frequent labels (top {min(top, c)}):")
    # Stable sort on -freq: ties keep the table's label order, so the report is deterministic.
    for j in np.argsort(-freq, kind="stable")[:top]:
        lines.append(f"  {names[j]:<{width}}  {freq[j]:>8}  {100 * freq[j] / n:5.1f}%")

    counts = label_cooccurrence(targets)
    prob = conditional_cooccurrence(targets)
    i_idx, j_idx = np.nonzero((counts > 0) & ~np.eye(c, dtype=bool))
    # Strongest first; among equal probabilities the pair seen on more images is the surer one.
    order = np.lexsort((-counts[i_idx, j_idx], -prob[i_idx, j_idx]))[:top]
    lines.append(f"\nstrongest co-occurrences P(j | i) (top {len(order)}):")
    for k in order:
        i, j = i_idx[k], j_idx[k]
        lines.append(f"  P({names[j]} | {names[i]}) = {prob[i, j]:.3f}  "
                     f"({counts[i, j]} of {counts[i, i]} images)")
    if not len(order):
        lines.append("  none: no two labels are positive on the same image")
    return "\n".join(lines)
