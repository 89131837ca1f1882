"""The Python, NumPy, torch (and CUDA) random states as plain tensors and numbers, so a resumed
run draws what the uninterrupted run would have drawn (checkpoints load with weights_only=True)."""
from __future__ import annotations

import random
from typing import Any, Iterable, Mapping

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(_flatten_python_state(random.getstate())),
            "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2])],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _flatten_python_state(state) -> Iterable[int]:
    version, internal, gauss = state
    return [version, *internal, -1 if gauss is None else 0]


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    values = list(state["python"])
    random.setstate((values[0], tuple(values[1:-1]), None))
    keys, pos = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, 0, 0.0))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
