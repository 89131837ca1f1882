"""A split's per-image predictions, kept beside its metrics: ``<run>/predictions_<split>.npz``.

eval_<split>.json holds the metrics; the report's gallery, precision-recall and F1 curves and
confusions need the scores behind them: each image's path, each label's probability and target.
Training writes the file for its validation and test splits, ``mlic eval`` for the split it
evaluates. The size is bounded: above ``MAX_ENTRIES`` scores (images x labels, 4 bytes each) a
fixed random sample of the images is kept, and the file says of how many.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mlic.atomic import atomic_write

MAX_ENTRIES = 5_000_000  # 20 MB of float32 scores before compression


@dataclass
class Predictions:
    paths: list[str]            # image files, in the split's order
    labels: list[str]
    probabilities: np.ndarray   # (N, C) float32
    targets: np.ndarray         # (N, C) int8: 1, 0, -1 (unknown)
    total: int                  # images in the split (> N when sampled)


def predictions_file(run: str | Path, split: str) -> Path:
    return Path(run) / f"predictions_{split}.npz"


def save_predictions(path: str | Path, paths: Sequence[str], labels: Sequence[str],
                     probabilities: np.ndarray, targets: np.ndarray, seed: int = 0) -> None:
    keep = np.arange(len(paths))
    limit = max(1, MAX_ENTRIES // max(1, len(labels)))
    if len(keep) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), limit, replace=False))

    def write(temp: str) -> None:
        with open(temp, "wb") as f:
            np.savez_compressed(f, paths=np.asarray([str(paths[i]) for i in keep]),
                                labels=np.asarray([str(n) for n in labels]),
                                probabilities=np.asarray(probabilities, np.float32)[keep],
                                targets=np.asarray(targets, np.int8)[keep],
                                total=np.int64(len(paths)))
    atomic_write(Path(path), write)


def load_predictions(path: str | Path) -> Predictions:
    with np.load(path, allow_pickle=False) as data:
        found = Predictions(data["paths"].tolist(), data["labels"].tolist(),
                            data["probabilities"].astype(np.float32),
                            data["targets"].astype(np.int8), int(data["total"]))
    n, c = found.probabilities.shape
    if found.targets.shape != (n, c) or len(found.paths) != n or len(found.labels) != c:
        raise ValueError(f"inconsistent shapes: {n} x {c} scores, {found.targets.shape} targets, "
                         f"{len(found.paths)} paths, {len(found.labels)} labels")
    return found
