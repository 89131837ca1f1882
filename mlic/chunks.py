"""Slices that split an (N, C) score array into pieces of bounded size.

Evaluation at full scale (125 k images x 9.6 k classes: 4.8 GB of float32 scores) cannot afford a
float64 copy or a full-size boolean mask of its inputs. The metrics work on one piece at a time,
converted to float64 there: class chunks (columns) where a class is ranked or counted on its own,
row chunks where an image's classes are decided together.
"""
from __future__ import annotations

from collections.abc import Iterator

CHUNK_BYTES = 32 * 2**20  # a float64 piece this large: with its temporaries, about 100 MB


def _span(length: int) -> int:
    """How many lines of ``length`` float64 values fit in ``CHUNK_BYTES`` (at least one)."""
    return max(1, CHUNK_BYTES // max(1, 8 * length))


def class_chunks(rows: int, classes: int) -> Iterator[slice]:
    """Consecutive column slices of an (rows, classes) array, each at most ``CHUNK_BYTES`` in
    float64 (at least one class)."""
    width = _span(rows)
    for start in range(0, classes, width):
        yield slice(start, min(start + width, classes))


def row_chunks(rows: int, classes: int) -> Iterator[slice]:
    """Consecutive row slices of an (rows, classes) array, each at most ``CHUNK_BYTES`` in
    float64 (at least one row)."""
    height = _span(classes)
    for start in range(0, rows, height):
        yield slice(start, min(start + height, rows))
