"""LabelTable: the one shape every dataset format is read into.

A table is a list of image paths, the ordered label names, and an ``int8`` target matrix with
one row per image and one column per label:

* ``1``  the label is present (positive),
* ``0``  the label is absent (negative),
* ``-1`` nobody knows (VOC "difficult", OpenImages unverified, a user's partial annotation).

Everything downstream (datasets, losses, metrics, label statistics) reads this table and nothing
else, so a new annotation format is one function that returns a ``LabelTable``.

Label names are Unicode NFC (``label_name``): "café" typed as one code point or as "e" plus a
combining accent prints the same and is one label, whichever file or tool it came from.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mlic.errors import DataError

POSITIVE, NEGATIVE, UNKNOWN = 1, 0, -1


def label_name(name: object) -> str:
    """A label name in the one form mlic compares names in (Unicode NFC)."""
    return unicodedata.normalize("NFC", str(name))


@dataclass
class LabelTable:
    paths: list[str]
    label_names: list[str]
    targets: np.ndarray
    root: Path | None = None
    source: str = ""  # the annotation file(s) it came from, for messages
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.paths = [str(p) for p in self.paths]
        self.label_names = [label_name(n) for n in self.label_names]
        self.targets = np.asarray(self.targets, dtype=np.int8)
        if self.root is not None:
            self.root = Path(self.root)
        where = self.source or "label table"
        if self.targets.ndim != 2 or self.targets.shape != (len(self.paths), len(self.label_names)):
            raise DataError(
                f"targets have shape {self.targets.shape}, expected "
                f"({len(self.paths)} images, {len(self.label_names)} labels)", where)
        bad = (self.targets < UNKNOWN) | (self.targets > POSITIVE)  # np.isin is slow on big tables
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(f"target of image {self.paths[row]!r}, label {self.label_names[col]!r} "
                            f"is {self.targets[row, col]}; targets must be 1, 0 or -1", where)
        if len(set(self.label_names)) != len(self.label_names):
            dup = sorted({n for n in self.label_names if self.label_names.count(n) > 1})
            raise DataError(f"duplicate label names: {dup}", where)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def image_path(self, index: int) -> Path:
        path = Path(self.paths[index])
        return path if path.is_absolute() or self.root is None else self.root / path

    def labels_of(self, index: int) -> list[str]:
        """Names of the positive labels of one image."""
        return [self.label_names[j] for j in np.flatnonzero(self.targets[index] == POSITIVE)]

    def subset(self, indices: Iterable[int]) -> "LabelTable":
        idx = np.asarray(list(indices), dtype=np.int64)
        return LabelTable([self.paths[i] for i in idx], list(self.label_names), self.targets[idx],
                          self.root, self.source, dict(self.extra))

    def with_labels(self, label_names: Sequence[str], missing: str = "negative") -> "LabelTable":
        """The same images with columns reordered to ``label_names``.

        Labels this table lacks become all ``missing`` ("negative" or "unknown"); labels this table has
        and ``label_names`` lacks are dropped. Used to align a validation split to the training labels.
        """
        fill = {"negative": NEGATIVE, "unknown": UNKNOWN}[missing]
        label_names = [label_name(n) for n in label_names]
        position = {name: j for j, name in enumerate(self.label_names)}
        out = np.full((len(self), len(label_names)), fill, dtype=np.int8)
        for j, name in enumerate(label_names):
            if name in position:
                out[:, j] = self.targets[:, position[name]]
        return LabelTable(list(self.paths), list(label_names), out, self.root, self.source,
                          dict(self.extra))

    def hide(self, fraction: float, seed: int = 0) -> tuple["LabelTable", int]:
        """A copy with ``fraction`` of the labelled entries (1 or 0) set to unknown, chosen uniformly
        at random with ``seed``: simulated partial annotation (``data.hide_fraction``).
        Returns the table and the number of entries hidden."""
        if not 0 <= fraction <= 1:
            raise DataError(f"hide fraction must be in [0, 1], got {fraction}", self.source)
        targets = self.targets.copy()
        labelled = np.flatnonzero(targets.reshape(-1) != UNKNOWN)
        count = int(round(fraction * len(labelled)))
        chosen = np.random.default_rng(seed).choice(labelled, size=count, replace=False)
        targets.reshape(-1)[chosen] = UNKNOWN
        return LabelTable(list(self.paths), list(self.label_names), targets, self.root, self.source,
                          dict(self.extra)), count

    def summary(self) -> str:
        pos = (self.targets == POSITIVE).sum()
        unk = (self.targets == UNKNOWN).sum()
        return (f"{len(self)} images, {self.num_labels} labels, "
                f"{pos / max(len(self), 1):.2f} positive labels per image, {unk} unknown entries")
