"""SparseRows: for each row (image), the sorted columns (labels) where something holds.

Compressed sparse rows without values: ``indptr`` (int64, one more than the rows) and
``indices`` (int32 columns). A ``LabelTable`` keeps one of these per label state, so an image
with three labels of 9,600 costs three int32 entries, not 9,600 int8 ones.
"""
from __future__ import annotations

import numpy as np


class SparseRows:
    def __init__(self, indptr: np.ndarray, indices: np.ndarray, num_columns: int):
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int32)
        self.num_columns = int(num_columns)

    @classmethod
    def empty(cls, num_rows: int, num_columns: int) -> "SparseRows":
        return cls(np.zeros(num_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), num_columns)

    @classmethod
    def from_pairs(cls, rows: np.ndarray, columns: np.ndarray, num_rows: int,
                   num_columns: int) -> "SparseRows":
        """From (row, column) pairs in any order; repeated pairs count once."""
        key = np.unique(np.asarray(rows, dtype=np.int64) * max(num_columns, 1)
                        + np.asarray(columns, dtype=np.int64))
        rows_sorted = key // max(num_columns, 1)
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows_sorted, minlength=num_rows), out=indptr[1:])
        return cls(indptr, key % max(num_columns, 1), num_columns)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "SparseRows":
        """From a dense boolean (rows, columns) matrix."""
        rows, columns = np.nonzero(mask)  # row-major: already sorted
        indptr = np.zeros(mask.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=mask.shape[0]), out=indptr[1:])
        return cls(indptr, columns, mask.shape[1])

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def row_ids(self) -> np.ndarray:
        """The row of every entry (int64, aligned with ``indices``)."""
        return np.repeat(np.arange(self.num_rows, dtype=np.int64), np.diff(self.indptr))

    def per_row(self) -> np.ndarray:
        return np.diff(self.indptr)

    def per_column(self) -> np.ndarray:
        return np.bincount(self.indices, minlength=self.num_columns).astype(np.int64)

    def columns_of(self, row: int) -> np.ndarray:
        return self.indices[self.indptr[row]:self.indptr[row + 1]]

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entries of ``rows`` in that order: (new indptr, position of each entry in ``rows``,
        entry positions in ``indices``), without a Python loop over rows."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        which = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        positions = np.arange(indptr[-1], dtype=np.int64) + np.repeat(starts - indptr[:-1], lengths)
        return indptr, which, positions

    def take(self, rows: np.ndarray) -> "SparseRows":
        indptr, _, positions = self.gather(rows)
        return SparseRows(indptr, self.indices[positions], self.num_columns)

    def remap_columns(self, new_column: np.ndarray, num_columns: int) -> "SparseRows":
        """Columns renumbered by ``new_column[old]``; entries of columns mapped to -1 are dropped."""
        mapped = np.asarray(new_column, dtype=np.int64)[self.indices]
        keep = mapped >= 0
        return SparseRows.from_pairs(self.row_ids()[keep], mapped[keep], self.num_rows, num_columns)

    def without(self, other: "SparseRows") -> "SparseRows":
        """These entries less those also in ``other`` (same shape)."""
        c = max(self.num_columns, 1)
        mine = self.row_ids() * c + self.indices
        keep = ~np.isin(mine, other.row_ids() * c + other.indices)
        return SparseRows.from_pairs(mine[keep] // c, mine[keep] % c, self.num_rows,
                                     self.num_columns)

    def to_scipy(self, dtype=np.float64):
        """A scipy CSR matrix with a 1 at every entry."""
        from scipy import sparse
        return sparse.csr_matrix((np.ones(self.nnz, dtype=dtype), self.indices, self.indptr),
                                 shape=(self.num_rows, self.num_columns))

    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes
