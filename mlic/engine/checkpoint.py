"""Checkpoints: safetensors weights + a JSON of what is needed to use them, written atomically.

``checkpoints/<tag>.safetensors``  the model's tensors (never pickled)
``checkpoints/<tag>.json``         label names, thresholds, preprocessing, model config, epoch, metrics
``checkpoints/last.state.pt``      everything resuming needs, in one file (model weights,
                                   optimizer, scheduler, EMA, scaler, RNG states, early stopping,
                                   epoch/step): plain tensors and numbers, read back with
                                   ``torch.load(weights_only=True)``, which refuses pickled objects

Every file is written to a temporary name, flushed to disk and renamed (``mlic.atomic``), so a
crash, even SIGKILL, leaves either the old file or the new one, never half of one. Resuming reads
``last.state.pt`` alone, so it is always self-consistent. A ``.safetensors`` and its ``.json`` are
two files written one after the other; the weights file also carries the metadata in its header,
with a ``save_id`` the JSON repeats, so a pair torn by a crash between the two renames still loads
with the metadata of its weights.
SIGINT (Ctrl-C) during a save is held until the save is complete.
"""
from __future__ import annotations

import contextlib
import json
import math
import pickle
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mlic.atomic import atomic_write
from mlic.errors import WeightsError
from mlic.models import MultiLabelClassifier, model_from_config
from mlic.models.weights import holds_pickled_objects
from mlic.run_folder import resolve_checkpoint

FORMAT_VERSION = 1
STATE_FILE = "last.state.pt"
EMBEDDED = "mlic_metadata"  # the JSON's content, also in the .safetensors header


def write_json(path: Path, data: Any) -> None:
    """Valid JSON: a NaN or infinite number (a metric of a class without positives) is null,
    not the bare ``NaN`` Python writes, which JSON readers refuse."""
    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(json_safe(data), f, indent=2, allow_nan=False)
    atomic_write(Path(path), write)


def json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def model_metadata(model: MultiLabelClassifier, label_names: list[str],
                   thresholds: float | list[float] = 0.5, **extra: Any) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "label_names": list(label_names),
            "thresholds": thresholds, "preprocessing": model.preprocessing.to_dict(),
            "model": model.model_config, **extra}


def save_model(directory: Path, tag: str, state_dict: dict[str, torch.Tensor],
               metadata: dict[str, Any]) -> Path:
    """``<tag>.safetensors`` (with the metadata embedded in its header) then ``<tag>.json``."""
    directory = Path(directory)
    # safetensors refuses shared or non-contiguous storage: give it plain copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    metadata = {**metadata, "save_id": uuid.uuid4().hex}
    header = {"save_id": metadata["save_id"], EMBEDDED: json.dumps(metadata)}
    with deferred_interrupt():
        atomic_write(directory / f"{tag}.safetensors",
                     lambda temp: save_file(tensors, temp, metadata=header))
        write_json(directory / f"{tag}.json", metadata)
    return directory / f"{tag}.json"


def read_metadata(meta_path: Path) -> dict[str, Any]:
    """The metadata of the weights beside ``meta_path``: the JSON (which ``mlic tune-thresholds``
    may have edited since), unless a crash between the two renames of a save left a JSON from
    another save than the weights: then the copy embedded in the weights file."""
    meta_path = Path(meta_path)
    weights = meta_path.with_suffix(".safetensors")
    try:
        with safe_open(str(weights), "pt", device="cpu") as f:
            header = f.metadata() or {}
    except Exception as e:  # a truncated or foreign file
        raise WeightsError(f"{weights}: unreadable weights ({e})") from None
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if not isinstance(meta, dict):
            raise TypeError(f"a JSON {type(meta).__name__}, not an object")
        if header.get("save_id") and meta.get("save_id") != header["save_id"] and EMBEDDED in header:
            meta = json.loads(header[EMBEDDED])
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{meta_path}: not a valid mlic checkpoint description ({e!r})") from None
    return meta


def load_model(path: str | Path, tag: str = "best") -> tuple[MultiLabelClassifier, dict[str, Any]]:
    """Rebuild a saved model from its metadata and load its weights; returns (model, metadata)."""
    meta_path = resolve_checkpoint(path, tag)
    meta = read_metadata(meta_path)
    try:
        model = model_from_config(meta["model"], meta["preprocessing"])
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{meta_path}: not a valid mlic checkpoint description ({e!r})") from None
    weights = meta_path.with_suffix(".safetensors")
    try:
        with safe_open(str(weights), "pt", device="cpu") as f:
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # a truncated or foreign file
        raise WeightsError(f"{weights}: unreadable weights ({e})") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"{weights}: weights do not fit the model described in "
                           f"{meta_path.name}: missing {result.missing_keys[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")
    model.eval()
    return model, meta


def save_training_state(directory: Path, state: dict[str, Any]) -> None:
    with deferred_interrupt():
        atomic_write(Path(directory) / STATE_FILE, lambda temp: torch.save(state, temp))


def load_training_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not holds_pickled_objects(e):
            raise WeightsError(f"{path}: cannot read the training state (damaged, or not written "
                               f"by mlic: {str(e).splitlines()[0]})") from None
        raise WeightsError(f"{path}: refused: it holds pickled Python objects, not only tensors and "
                           f"numbers, and loading it could run code; mlic never writes such files "
                           f"(detail: {str(e).splitlines()[0]})") from None
    except Exception as e:  # truncated, or not a torch file
        raise WeightsError(f"{path}: cannot read the training state ({e})") from None
    if not isinstance(state, dict) or "epoch" not in state or "optimizer" not in state:
        raise WeightsError(f"{path}: not an mlic training state (no epoch / optimizer in it)")
    return state


_deferring = False


@contextlib.contextmanager
def deferred_interrupt():
    """Hold a SIGINT (Ctrl-C) that arrives inside the block, and raise it once the block is done,
    so that an interrupted save still completes. Main thread only (where signals are delivered)."""
    global _deferring
    if _deferring or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if received:
        raise KeyboardInterrupt
