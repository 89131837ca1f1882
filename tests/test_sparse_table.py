"""The sparse LabelTable against the dense matrix it stands for: every operation gives what the
same operation on the dense int8 matrix gives (the table's behaviour before it became sparse)."""
from __future__ import annotations

import numpy as np
import pytest

from mlic.data.sparse_rows import SparseRows
from mlic.data.string_array import StringArray
from mlic.data.table import NEGATIVE, POSITIVE, UNKNOWN, LabelTable
from mlic.errors import DataError


def random_targets(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    # Some columns mostly unknown (stored with fill -1), others mostly negative (fill 0).
    mostly_unknown = rng.random(c) < 0.5
    p_unknown = np.where(mostly_unknown, 0.8, 0.1)
    draw = rng.random((n, c))
    targets = np.where(draw < p_unknown, UNKNOWN, NEGATIVE).astype(np.int8)
    targets[rng.random((n, c)) < 0.15] = POSITIVE
    return targets


def table_of(targets: np.ndarray) -> LabelTable:
    n, c = targets.shape
    return LabelTable([f"d{i % 3}/{i}.jpg" for i in range(n)], [f"l{j}" for j in range(c)],
                      targets, "/root", "t.csv", {"k": 1})


@pytest.mark.parametrize("seed", range(6))
def test_sparse_table_matches_the_dense_matrix(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(0, 40)), int(rng.integers(1, 12))
    dense = random_targets(rng, n, c)
    table = table_of(dense)
    assert np.array_equal(table.targets, dense) and table.targets.dtype == np.int8
    for state in (POSITIVE, NEGATIVE, UNKNOWN):
        assert np.array_equal(table.count(state, axis=0), (dense == state).sum(axis=0))
        assert np.array_equal(table.count(state, axis=1), (dense == state).sum(axis=1))
    pos, unk = (dense == POSITIVE).sum(), (dense == UNKNOWN).sum()
    assert table.summary() == (f"{n} images, {c} labels, {pos / max(n, 1):.2f} positive labels "
                               f"per image, {unk} unknown entries")
    for i in range(n):
        assert table.labels_of(i) == [f"l{j}" for j in np.flatnonzero(dense[i] == POSITIVE)]

    idx = rng.integers(0, max(n, 1), size=min(n, 15)) if n else np.zeros(0, dtype=int)
    assert np.array_equal(table.rows(idx), dense[idx])
    part = table.subset(idx.tolist())
    assert np.array_equal(part.targets, dense[idx])
    assert part.paths == [f"d{i % 3}/{i}.jpg" for i in idx]
    assert (part.root, part.source, part.extra) == (table.root, table.source, table.extra)

    names = [f"l{j}" for j in rng.permutation(c)[: max(c - 2, 1)]] + ["new1", "new2"]
    for missing, fill in (("negative", NEGATIVE), ("unknown", UNKNOWN)):
        aligned = table.with_labels(names, missing)
        expected = np.full((n, len(names)), fill, dtype=np.int8)
        for j, name in enumerate(names):
            if name in table.label_names:
                expected[:, j] = dense[:, table.label_names.index(name)]
        assert np.array_equal(aligned.targets, expected) and aligned.label_names == names
        assert aligned.summary() == table_of(expected).summary()

    hidden, count = table.hide(0.3, seed=seed)
    reference = dense.copy()
    labelled = np.flatnonzero(reference.reshape(-1) != UNKNOWN)
    chosen = np.random.default_rng(seed).choice(labelled, size=int(round(0.3 * len(labelled))),
                                                replace=False)
    reference.reshape(-1)[chosen] = UNKNOWN
    assert count == len(chosen) and np.array_equal(hidden.targets, reference)


def test_from_sparse_with_unknown_fill_stores_only_the_listed_entries() -> None:
    positives = SparseRows.from_pairs([0, 0, 2], [1, 0, 2], 3, 4)
    negatives = SparseRows.from_pairs([1, 2], [3, 0], 3, 4)
    table = LabelTable.from_sparse(["a", "b", "c"], list("wxyz"), positives, negatives,
                                   fill=UNKNOWN)
    assert table.targets.tolist() == [[1, 1, -1, -1], [-1, -1, -1, 0], [0, -1, 1, -1]]
    assert table.unknowns.nnz == 0 and table.negatives.nnz == 2
    # 3 x 4 unknown entries would be 12 stored ones in a dense-style table; none is stored.
    assert table.count(UNKNOWN, axis=0).tolist() == [1, 2, 2, 2]


def test_dense_construction_keeps_its_checks() -> None:
    with pytest.raises(DataError, match="targets must be 1, 0 or -1"):
        LabelTable(["a.jpg"], ["x", "y"], [[1, 2]])
    with pytest.raises(DataError, match="targets must be 1, 0 or -1"):
        LabelTable(["a.jpg"], ["x"], [[-2]])
    with pytest.raises(DataError, match=r"expected \(1 images, 2 labels\)"):
        LabelTable(["a.jpg"], ["x", "y"], [[1]])
    with pytest.raises(DataError, match="duplicate label names"):
        LabelTable(["a.jpg"], ["x", "x"], [[1, 0]])


def test_string_array_reads_like_a_list() -> None:
    strings = ["a/1.jpg", "", "café/ü.png", "lone\ud800surrogate.jpg", "z"]
    array = StringArray(strings)
    assert len(array) == 5 and array == strings and list(array) == strings
    assert array[2] == "café/ü.png" and array[-1] == "z" and array[1:3] == strings[1:3]
    assert array.take(np.array([4, 3, 0, 0])) == ["z", strings[3], "a/1.jpg", "a/1.jpg"]
    assert array.take(np.array([], dtype=int)) == []
    assert array != strings[:4] and array == StringArray(strings)
    with pytest.raises(IndexError):
        array[5]


def test_dataset_builds_each_target_row_from_the_sparse_table() -> None:
    import torch
    from mlic.data.dataset import MultiLabelDataset
    dense = random_targets(np.random.default_rng(1), 9, 5)
    dataset = MultiLabelDataset(table_of(dense), transform=lambda image: image)
    assert not hasattr(dataset, "targets")  # no float32 copy of the whole table
    for i in range(9):
        assert torch.equal(dataset.target(i), torch.from_numpy(dense[i].astype(np.float32)))
