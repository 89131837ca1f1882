"""An (N, C) array filled batch by batch, preallocated rather than concatenated at the end.

Collecting batches in a list and concatenating them holds the scores twice at the end (and a
float64 cast a third time); at 125 k images x 9.6 k classes one float32 copy is 4.8 GB. Here the rows
go straight into one array, sized from the loader's length, kept in memory or, for a large split,
in a memory-mapped ``.npy`` file in a given folder (the operating system pages it in and out).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

MEMMAP_BYTES = 2 * 2**30  # an array larger than this goes to a file when a folder is given


class ScoreRows:
    """Rows appended in order; ``array()`` is the filled part, (rows, C).

    ``capacity``: the expected number of rows (an upper bound; more still fit, by reallocating).
    ``path``: where the array is memory-mapped if it would exceed ``MEMMAP_BYTES``."""

    def __init__(self, capacity: int, dtype: np.dtype | type, path: Path | None = None):
        self.capacity, self.dtype, self.path = max(1, capacity), np.dtype(dtype), path
        self.rows = 0
        self.data: np.ndarray | None = None

    def _allocate(self, rows: int, width: tuple[int, ...]) -> np.ndarray:
        nbytes = rows * int(np.prod(width, dtype=np.int64)) * self.dtype.itemsize
        if self.path is None or nbytes <= MEMMAP_BYTES:
            return np.empty((rows, *width), dtype=self.dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        path = self.path if self.data is None else self.path.with_suffix(f".{rows}.npy")
        return np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=(rows, *width))

    def append(self, batch: np.ndarray) -> None:
        if self.data is None:
            self.data = self._allocate(max(self.capacity, len(batch)), batch.shape[1:])
        elif self.rows + len(batch) > len(self.data):  # the loader gave more rows than it said
            grown = self._allocate(max(2 * len(self.data), self.rows + len(batch)),
                                   self.data.shape[1:])
            grown[:self.rows] = self.data[:self.rows]
            self.data = grown
        self.data[self.rows:self.rows + len(batch)] = batch
        self.rows += len(batch)

    def array(self) -> np.ndarray:
        """The rows appended so far (a view: no copy)."""
        if self.data is None:
            return np.empty((0, 0), dtype=self.dtype)
        return self.data[:self.rows]
