"""Label-mask training (C-Tran) and the known-label evaluation protocol.

Training (C-Tran, Lanchantin et al. CVPR 2021; QData/C-Tran's ``--use_lmt``): for each sample, draw
k uniformly from 0 .. floor(max_fraction * C) and reveal k labels, chosen at random, with their true
state; the model sees them as known and the loss covers only the labels it was not told. A label
whose target is unknown (-1) is never revealed and never scored (the losses skip -1).

Evaluation: a fraction of each image's labelled entries is revealed, chosen by a generator seeded from
the image's identity (its path as written in the annotations), so every model and every run sees the
same known set; metrics are computed over the other entries only. The reference seeds from the SHA-1
of the decoded image array; a path is as stable and needs no decoding.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import torch

UNKNOWN = -1


def sample_revealed(targets: torch.Tensor, max_fraction: float = 0.75,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (B, C): the labels revealed to the model, k_i ~ U{0..floor(max_fraction * C)} per row
    (fewer when a row has fewer labelled entries), never an entry whose target is -1."""
    batch, classes = targets.shape
    limit = math.floor(max_fraction * classes)
    counts = torch.randint(0, limit + 1, (batch, 1), generator=generator, device=targets.device)
    keys = torch.rand(batch, classes, generator=generator, device=targets.device)
    keys = keys.masked_fill(targets < 0, 2.0)  # unknown targets sort after every labelled entry
    rank = keys.argsort(dim=1).argsort(dim=1)
    return (rank < counts) & (targets >= 0)


def reveal(targets: torch.Tensor, revealed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(label_states, loss_targets): the revealed entries' true states (else -1, as a float tensor
    for the model), and the targets with the revealed entries set to -1 (not scored)."""
    unknown = torch.full_like(targets, UNKNOWN)
    label_states = torch.where(revealed, targets, unknown).float()
    return label_states, torch.where(revealed, unknown, targets)


def image_seed(identity: str) -> int:
    return int.from_bytes(hashlib.sha1(identity.encode("utf-8")).digest()[:8], "little")


def evaluation_label_states(paths: Sequence[str], targets: np.ndarray, fraction: float) -> np.ndarray:
    """int8 (N, C) label states for the evaluation protocol: for image i, floor(fraction * n_i) of
    its n_i labelled entries are revealed (1/0), the rest are -1; reproducible from the path alone."""
    if not 0 <= fraction < 1:
        raise ValueError(f"known fraction must be in [0, 1), got {fraction}")
    targets = np.asarray(targets)
    states = np.full(targets.shape, UNKNOWN, dtype=np.int8)
    for i, path in enumerate(paths):
        labelled = np.flatnonzero(targets[i] >= 0)
        count = math.floor(fraction * len(labelled))
        if count:
            chosen = np.random.default_rng(image_seed(str(path))).permutation(labelled)[:count]
            states[i, chosen] = targets[i, chosen]
    return states


def unknown_only(targets: np.ndarray, label_states: np.ndarray) -> np.ndarray:
    """The targets with every revealed entry set to -1, so metrics count the unknown entries only."""
    return np.where(label_states >= 0, UNKNOWN, targets).astype(np.int8)
