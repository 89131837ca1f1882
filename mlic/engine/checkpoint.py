"""Checkpoints: safetensors weights + a JSON of what is needed to use them, written atomically.

``checkpoints/<tag>.safetensors``  the model's tensors (never pickled)
``checkpoints/<tag>.json``         label names, thresholds, preprocessing, model config, epoch, metrics
``checkpoints/last.state.pt``      what resuming needs beyond the weights (optimizer, scheduler,
                                   EMA, scaler, RNG states, epoch): plain tensors and numbers, read
                                   back with ``torch.load(weights_only=True)``

Every file is written to a temporary name, flushed to disk and renamed, so a crash leaves either
the old file or the new one, never half of one. The JSON is written last: a checkpoint is only
complete when its JSON exists.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from mlic.errors import WeightsError
from mlic.models import MultiLabelClassifier, model_from_config

FORMAT_VERSION = 1


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)``, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def write_json(path: Path, data: Any) -> None:
    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    atomic_write(Path(path), write)


def model_metadata(model: MultiLabelClassifier, label_names: list[str],
                   thresholds: float | list[float] = 0.5, **extra: Any) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "label_names": list(label_names),
            "thresholds": thresholds, "preprocessing": model.preprocessing.to_dict(),
            "model": model.model_config, **extra}


def save_model(directory: Path, tag: str, state_dict: dict[str, torch.Tensor],
               metadata: dict[str, Any]) -> Path:
    directory = Path(directory)
    # safetensors refuses shared or non-contiguous storage: give it plain copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    atomic_write(directory / f"{tag}.safetensors", lambda temp: save_file(tensors, temp))
    write_json(directory / f"{tag}.json", metadata)
    return directory / f"{tag}.json"


def resolve_checkpoint(path: str | Path, tag: str = "best") -> Path:
    """A run folder, a checkpoints folder, or a checkpoint's .json/.safetensors -> its .json."""
    path = Path(path)
    candidates = []
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            candidates += [folder / f"{tag}.json", folder / "last.json"]
    elif path.suffix in (".json", ".safetensors"):
        candidates.append(path.with_suffix(".json"))
    for candidate in candidates:
        if candidate.is_file() and candidate.with_suffix(".safetensors").is_file():
            return candidate
    raise WeightsError(f"{path}: no checkpoint found (looked for "
                       f"{', '.join(str(c) for c in candidates) or 'a .json beside a .safetensors'})")


def load_model(path: str | Path, tag: str = "best") -> tuple[MultiLabelClassifier, dict[str, Any]]:
    """Rebuild a saved model from its JSON and load its weights; returns (model, metadata)."""
    meta_path = resolve_checkpoint(path, tag)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        model = model_from_config(meta["model"], meta["preprocessing"])
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{meta_path}: not a valid mlic checkpoint description ({e!r})") from None
    try:
        state = load_file(str(meta_path.with_suffix(".safetensors")), device="cpu")
    except Exception as e:  # a truncated or foreign file
        raise WeightsError(f"{meta_path.with_suffix('.safetensors')}: unreadable weights ({e})") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"{meta_path.with_suffix('.safetensors')}: weights do not fit the model "
                           f"described in {meta_path.name}: missing {result.missing_keys[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")
    model.eval()
    return model, meta


def save_training_state(directory: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(directory) / "last.state.pt", lambda temp: torch.save(state, temp))


def load_training_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "last.state.pt"
    if not path.is_file():
        raise WeightsError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot read the training state ({e})") from None
