"""LabelTable: the one shape every dataset format is read into.

A table is the image paths, the ordered label names, and for every image and label one state:

* ``1``  the label is present (positive),
* ``0``  the label is absent (negative),
* ``-1`` nobody knows (VOC "difficult", OpenImages unverified, a user's partial annotation).

Everything downstream (datasets, losses, metrics, label statistics) reads this table and nothing
else, so a new annotation format is one function that returns a ``LabelTable``.

Storage is sparse, because real label sets are: an OpenImages image has a handful of verified
labels out of thousands. Each label column has a ``fill`` state (negative, or unknown for
OpenImages-style data) and the entries that differ from it are listed per image in
``SparseRows`` (``positives``, ``negatives``, ``unknowns``; an entry is never stored with its
column's own fill state). Paths are one ``StringArray``. ``rows(indices)`` builds the dense int8
block of some images (what a Dataset hands to a batch); ``targets`` is the whole dense matrix,
built on demand, for small tables and callers that want a matrix. A table can be built from a
dense matrix (``LabelTable(paths, names, targets)``) or from sparse rows (``from_sparse``), as
formats with millions of rows do.

Label names are Unicode NFC (``label_name``): "café" typed as one code point or as "e" plus a
combining accent prints the same and is one label, whichever file or tool it came from.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mlic.data.sparse_rows import SparseRows
from mlic.data.string_array import StringArray
from mlic.errors import DataError

POSITIVE, NEGATIVE, UNKNOWN = 1, 0, -1


def label_name(name: object) -> str:
    """A label name in the one form mlic compares names in (Unicode NFC)."""
    return unicodedata.normalize("NFC", str(name))


class LabelTable:
    def __init__(self, paths: Iterable[str], label_names: Sequence[str], targets,
                 root: str | Path | None = None, source: str = "", extra: dict | None = None):
        paths = paths if isinstance(paths, StringArray) else StringArray(paths)
        names = [label_name(n) for n in label_names]
        where = source or "label table"
        targets = np.asarray(targets, dtype=np.int8)
        if targets.ndim != 2 or targets.shape != (len(paths), len(names)):
            raise DataError(f"targets have shape {targets.shape}, expected "
                            f"({len(paths)} images, {len(names)} labels)", where)
        bad = (targets.view(np.uint8) + np.uint8(1)) > 2  # not -1, 0 or 1, in one temporary
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(f"target of image {paths[row]!r}, label {names[col]!r} "
                            f"is {targets[row, col]}; targets must be 1, 0 or -1", where)
        # Each column's fill is its more common non-positive state, so little is stored.
        unknown_fill = (targets == UNKNOWN).sum(axis=0) > (targets == NEGATIVE).sum(axis=0)
        fill = np.where(unknown_fill, UNKNOWN, NEGATIVE).astype(np.int8)
        self._set(paths, names, fill, SparseRows.from_mask(targets == POSITIVE),
                  SparseRows.from_mask((targets == NEGATIVE) & unknown_fill),
                  SparseRows.from_mask((targets == UNKNOWN) & ~unknown_fill), root, source, extra)

    @classmethod
    def from_sparse(cls, paths: Iterable[str], label_names: Sequence[str], positives: SparseRows,
                    negatives: SparseRows | None = None, unknowns: SparseRows | None = None,
                    fill: int | np.ndarray = NEGATIVE, root: str | Path | None = None,
                    source: str = "", extra: dict | None = None) -> "LabelTable":
        """A table from the positives and the other explicit entries (disjoint from them); every
        entry not listed has its column's ``fill`` (NEGATIVE or UNKNOWN, one or per column)."""
        paths = paths if isinstance(paths, StringArray) else StringArray(paths)
        names = [label_name(n) for n in label_names]
        n, c = len(paths), len(names)
        fill = np.broadcast_to(np.asarray(fill, dtype=np.int8), (c,)).copy()
        if not np.isin(fill, (NEGATIVE, UNKNOWN)).all():
            raise DataError("a label column's fill must be 0 or -1", source or "label table")
        empty = SparseRows.empty(n, c)
        negatives, unknowns = negatives or empty, unknowns or empty
        for rows in (positives, negatives, unknowns):
            if rows.num_rows != n or rows.num_columns != c:
                raise DataError(f"sparse labels have shape ({rows.num_rows}, {rows.num_columns}), "
                                f"expected ({n} images, {c} labels)", source or "label table")
        # Canonical form: an entry equal to its column's fill is not stored.
        negatives = _only_columns(negatives, fill == UNKNOWN)
        unknowns = _only_columns(unknowns, fill == NEGATIVE)
        table = cls.__new__(cls)
        table._set(paths, names, fill, positives, negatives, unknowns, root, source, extra)
        return table

    def _set(self, paths: StringArray, names: list[str], fill: np.ndarray, positives: SparseRows,
             negatives: SparseRows, unknowns: SparseRows, root, source: str,
             extra: dict | None) -> None:
        self.paths, self.label_names, self.fill = paths, names, fill
        self.positives, self.negatives, self.unknowns = positives, negatives, unknowns
        self.root = Path(root) if root is not None else None
        self.source = source
        self.extra = dict(extra or {})
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise DataError(f"duplicate label names: {dup}", source or "label table")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"LabelTable({self.summary()}, source={self.source!r})"

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def _stored(self) -> tuple[tuple[int, SparseRows], ...]:
        return (NEGATIVE, self.negatives), (UNKNOWN, self.unknowns), (POSITIVE, self.positives)

    def rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The dense int8 (len(indices), labels) states of the images at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        block = np.empty((len(idx), self.num_labels), dtype=np.int8)
        block[:] = self.fill
        for state, stored in self._stored():
            _, which, positions = stored.gather(idx)
            block[which, stored.indices[positions]] = state
        return block

    @property
    def targets(self) -> np.ndarray:
        """The whole dense int8 (images, labels) matrix, built anew on each access: for small
        tables; large ones are read by ``rows``, ``count`` and ``positives``."""
        return self.rows(np.arange(len(self)))

    def count(self, state: int, axis: int) -> np.ndarray:
        """How many entries are in ``state``: per label (``axis=0``) or per image (``axis=1``)."""
        filled = self.fill == state
        stored = {s: rows for s, rows in self._stored()}
        if axis == 0:
            listed = sum(rows.per_column() for rows in stored.values())
            return stored[state].per_column() + filled * (len(self) - listed)
        # Per image: its listed entries of ``state``, plus the filled columns it lists nothing in.
        in_filled = sum(np.bincount(rows.row_ids(), weights=filled[rows.indices],
                                    minlength=len(self)) for rows in stored.values())
        return stored[state].per_row() + int(filled.sum()) - in_filled.astype(np.int64)

    def image_path(self, index: int) -> Path:
        path = Path(self.paths[index])
        return path if path.is_absolute() or self.root is None else self.root / path

    def labels_of(self, index: int) -> list[str]:
        """Names of the positive labels of one image."""
        return [self.label_names[j] for j in self.positives.columns_of(index)]

    def _like(self, paths: StringArray, names: list[str], fill: np.ndarray,
              positives: SparseRows, negatives: SparseRows, unknowns: SparseRows) -> "LabelTable":
        return LabelTable.from_sparse(paths, names, positives, negatives, unknowns, fill,
                                      self.root, self.source, self.extra)

    def subset(self, indices: Iterable[int]) -> "LabelTable":
        idx = np.fromiter(indices, dtype=np.int64) if not isinstance(indices, np.ndarray) \
            else indices.astype(np.int64)
        return self._like(self.paths.take(idx), list(self.label_names), self.fill,
                          *(rows.take(idx) for rows in
                            (self.positives, self.negatives, self.unknowns)))

    def with_labels(self, label_names: Sequence[str], missing: str = "negative") -> "LabelTable":
        """The same images with columns reordered to ``label_names``.

        Labels this table lacks become all ``missing`` ("negative" or "unknown"); labels this table has
        and ``label_names`` lacks are dropped. Used to align a validation split to the training labels.
        """
        fill_missing = {"negative": NEGATIVE, "unknown": UNKNOWN}[missing]
        label_names = [label_name(n) for n in label_names]
        position = {name: j for j, name in enumerate(label_names)}
        new_column = np.array([position.get(n, -1) for n in self.label_names], dtype=np.int64)
        fill = np.full(len(label_names), fill_missing, dtype=np.int8)
        kept = new_column >= 0
        fill[new_column[kept]] = self.fill[kept]  # a missing column is all fill: nothing stored
        return self._like(self.paths, label_names, fill,
                          *(rows.remap_columns(new_column, len(label_names)) for rows in
                            (self.positives, self.negatives, self.unknowns)))

    def hide(self, fraction: float, seed: int = 0) -> tuple["LabelTable", int]:
        """A copy with ``fraction`` of the labelled entries (1 or 0) set to unknown, chosen uniformly
        at random with ``seed``: simulated partial annotation (``data.hide_fraction``).
        Returns the table and the number of entries hidden. Works on the dense matrix: hiding a
        share of every negative is dense by nature (a small-data experiment)."""
        if not 0 <= fraction <= 1:
            raise DataError(f"hide fraction must be in [0, 1], got {fraction}", self.source)
        targets = self.targets
        labelled = np.flatnonzero(targets.reshape(-1) != UNKNOWN)
        count = int(round(fraction * len(labelled)))
        chosen = np.random.default_rng(seed).choice(labelled, size=count, replace=False)
        targets.reshape(-1)[chosen] = UNKNOWN
        return LabelTable(self.paths, list(self.label_names), targets, self.root, self.source,
                          self.extra), count

    def summary(self) -> str:
        pos = self.positives.nnz
        unk = int(self.count(UNKNOWN, axis=0).sum())
        return (f"{len(self)} images, {self.num_labels} labels, "
                f"{pos / max(len(self), 1):.2f} positive labels per image, {unk} unknown entries")

    def nbytes(self) -> int:
        """Memory held by the labels and paths (not the names)."""
        return (len(self.paths.buffer) + self.paths.offsets.nbytes + self.fill.nbytes
                + sum(rows.nbytes() for _, rows in self._stored()))


def _only_columns(rows: SparseRows, keep: np.ndarray) -> SparseRows:
    """``rows`` without the entries of the columns where ``keep`` is False."""
    if rows.nnz == 0 or keep[rows.indices].all():
        return rows
    return rows.remap_columns(np.where(keep, np.arange(len(keep)), -1), rows.num_columns)
