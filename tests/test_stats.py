"""Label statistics against values counted by hand."""
from __future__ import annotations

import numpy as np

from mlic.data.stats import (conditional_cooccurrence, describe, label_cooccurrence,
                             label_frequencies)
from mlic.data.table import LabelTable

#                    a   b   c   d (never positive)
TARGETS = np.array([[1,  1,  0,  0],
                    [1, -1,  1,  0],
                    [1,  1,  1,  0],
                    [0,  1, -1,  0],
                    [-1, 0,  0, -1]], dtype=np.int8)
TABLE = LabelTable([f"{i}.jpg" for i in range(5)], ["a", "b", "c", "d"], TARGETS, source="t.csv")


def test_frequencies_ignore_unknowns() -> None:
    assert label_frequencies(TARGETS).tolist() == [3, 3, 2, 0]
    assert label_frequencies(TABLE).tolist() == [3, 3, 2, 0]


def test_cooccurrence_counts() -> None:
    assert label_cooccurrence(TABLE).tolist() == [[3, 2, 2, 0],
                                                  [2, 3, 1, 0],
                                                  [2, 1, 2, 0],
                                                  [0, 0, 0, 0]]
    assert label_cooccurrence(TARGETS).dtype == np.int64


def test_conditional_cooccurrence() -> None:
    prob = conditional_cooccurrence(TARGETS)
    expected = [[0, 2 / 3, 2 / 3, 0],
                [2 / 3, 0, 1 / 3, 0],
                [1, 1 / 2, 0, 0],
                [0, 0, 0, 0]]  # d is never positive: a zero row, not NaN
    np.testing.assert_allclose(prob, expected)
    assert np.isfinite(prob).all()


def test_empty_matrices() -> None:
    empty = np.zeros((0, 3), dtype=np.int8)
    assert label_frequencies(empty).tolist() == [0, 0, 0]
    assert conditional_cooccurrence(empty).tolist() == [[0.0] * 3] * 3


def test_describe() -> None:
    report = describe(TABLE)
    for line in ("images: 5", "labels: 4",
                 "positives per image: mean 1.60, min 0, max 3",
                 "unknowns per image: mean 0.80, min 0, max 2",
                 "images with no positive label: 1 (20.0%)",
                 "labels with no positive image: 1 (d)",
                 "P(a | c) = 1.000  (2 of 2 images)",
                 "P(c | b) = 0.333  (1 of 3 images)"):
        assert line in report, f"{line!r} not in\n{report}"
    lines = report.splitlines()
    frequent = lines[lines.index("most frequent labels (top 4):") + 1:][:4]
    assert [line.split()[0] for line in frequent] == ["a", "b", "c", "d"]
    assert frequent[0].split()[1:] == ["3", "60.0%"]
    pairs = lines[lines.index("strongest co-occurrences P(j | i) (top 6):") + 1:]
    assert [p.split(")")[0].strip() for p in pairs] == [
        "P(a | c", "P(b | a", "P(c | a", "P(a | b", "P(b | c", "P(c | b"]

    short = describe(TABLE, top=2)
    assert "most frequent labels (top 2):" in short
    assert "strongest co-occurrences P(j | i) (top 2):" in short
    assert "P(c | a)" not in short


def test_describe_degenerate_tables() -> None:
    assert "images: 0" in describe(LabelTable([], ["a"], np.zeros((0, 1))))
    lonely = describe(LabelTable(["x.jpg", "y.jpg"], ["a", "b"], [[1, 0], [0, 1]]))
    assert "none: no two labels are positive on the same image" in lonely


def test_sparse_cooccurrence_matches_the_dense_product() -> None:
    """The sparse product, and describe's pairs read from it, against the dense reference:
    (T == 1)^T (T == 1), and its off-diagonal pairs ranked by P(j | i), then count, then position."""
    rng = np.random.default_rng(0)
    targets = rng.choice(np.array([1, 0, -1], dtype=np.int8), size=(300, 12), p=[0.2, 0.6, 0.2])
    targets[:, 11] = 0  # a label never positive
    positive = (targets == 1).astype(np.int64)
    reference = positive.T @ positive
    table = LabelTable([f"{i}.jpg" for i in range(300)], [f"l{j}" for j in range(12)], targets)
    assert np.array_equal(label_cooccurrence(table), reference)
    assert np.array_equal(label_cooccurrence(targets), reference)
    assert np.array_equal(label_frequencies(table), np.diag(reference))

    totals = np.diag(reference)[:, None].astype(float)
    prob = np.divide(reference, totals, out=np.zeros(reference.shape), where=totals > 0)
    i_idx, j_idx = np.nonzero((reference > 0) & ~np.eye(12, dtype=bool))
    order = np.lexsort((-reference[i_idx, j_idx], -prob[i_idx, j_idx]))[:40]
    expected = [f"  P(l{j_idx[k]} | l{i_idx[k]}) = {prob[i_idx[k], j_idx[k]]:.3f}  "
                f"({reference[i_idx[k], j_idx[k]]} of {reference[i_idx[k], i_idx[k]]} images)"
                for k in order]
    lines = describe(table, top=40).splitlines()
    start = lines.index("strongest co-occurrences P(j | i) (top 40):") + 1
    assert lines[start:start + 40] == expected


def test_describe_prints_the_tables_notes() -> None:
    noted = LabelTable(["x.jpg"], ["a"], [[1]], extra={"notes": ["kept 1 of 2 classes"]})
    assert "note: kept 1 of 2 classes" in describe(noted).splitlines()
