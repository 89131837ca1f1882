"""Prediction with a trained or exported model: ``Predictor.load(path).predict(images)``.

``path`` is a run folder, a checkpoint, or an exported ``.onnx`` / ``.xml`` file alone; ``backend``
is ``torch``, ``onnxruntime`` or ``openvino`` (default: torch for checkpoints, onnxruntime for
.onnx, OpenVINO for .xml). Images may be paths, PIL images or HxWx3 uint8 arrays; every backend gets
the same preprocessing, the one stored with the model (checkpoint JSON or the exported file's
metadata), so predictions match what evaluation measured. Decisions follow the model's rule
(``mlic.decisions``): its thresholds (one per class after ``mlic tune-thresholds``, else 0.5) and at
least ``min_labels`` labels per image (default 1: no image comes back without a label; 0 allows it).

Known labels: ``predict(images, known={"dog": 1, "cat": 0})`` (or one dict per image) tells a model
that takes label states (C-Tran) what is already known; other labels stay unknown (-1). Label names
the model does not have are an error. Models without label states cannot use them: their
predictions are unchanged and a ``KnownLabelsIgnored`` warning says so.

Unreadable images: ``on_bad="error"`` (default) stops at the first with its ``DataError``;
``on_bad="skip"`` leaves each out of the results with an ``ImageSkipped`` warning naming the file
and the problem, so one bad file does not cost the other predictions.
"""
from __future__ import annotations

import glob
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mlic.data.images import MAX_PIXELS, load_rgb, to_rgb
from mlic.data.table import label_name
from mlic.data.transforms import eval_transform
from mlic.decisions import decide
from mlic.engine.assembly import resolve_device
from mlic.errors import DataError, WeightsError, did_you_mean
from mlic.export.runtime import TorchRuntime, load_runtime
from mlic.models import MultiLabelClassifier
from mlic.models.backbone import Preprocessing

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def expand_image_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns -> image files, sorted."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.exists():  # a file; or a named pipe or device, which load_rgb refuses by name
            out.append(path)
        elif any(ch in str(item) for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
            if not matches:
                raise DataError("the pattern matches no file", item)
            out += [p for p in matches if p.is_file()]
        else:
            raise DataError("no such file or folder", item)
    if not out:
        raise DataError(f"no images found in {', '.join(map(str, items))}")
    return out


class KnownLabelsIgnored(UserWarning):
    """Known labels were given to a model whose head cannot use them (no label states)."""


class ImageSkipped(UserWarning):
    """An image that cannot be read was left out of the predictions (``on_bad="skip"``)."""


Known = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
_STATE_VALUES = {1: 1.0, 0: 0.0, -1: -1.0, "1": 1.0, "0": 0.0, "-1": -1.0}


class Predictor:
    def __init__(self, model: MultiLabelClassifier | Any, metadata: dict[str, Any],
                 device: str = "cpu"):
        """``model``: a classifier (run with PyTorch on ``device``) or a runtime from
        ``mlic.export.runtime.load_runtime``."""
        self.runtime = TorchRuntime(model, device) if isinstance(model, torch.nn.Module) else model
        self.model = getattr(self.runtime, "model", None)  # the nn.Module on the torch backend
        self.metadata = metadata
        self.label_names: list[str] = [label_name(n) for n in metadata["label_names"]]
        self.runtime.num_classes = len(self.label_names)
        thresholds = metadata.get("thresholds", 0.5)
        self.thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64),
                                          (len(self.label_names),)).copy()
        self.min_labels = metadata.get("min_labels", 1)
        if not isinstance(self.min_labels, int) or isinstance(self.min_labels, bool) \
                or self.min_labels < 0:
            raise WeightsError(f"the model's min_labels must be a whole number >= 0, got "
                               f"{self.min_labels!r}")
        self.preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
        self.transform = eval_transform(self.preprocessing)
        self.max_pixels: int | None = MAX_PIXELS  # larger images are refused (decompression bombs)

    @classmethod
    def load(cls, path: str | Path, backend: str | None = None, device: str = "auto",
             tag: str = "best", precision: str | None = None, threads: int | None = None
             ) -> "Predictor":
        """From a run folder, its checkpoints folder, a checkpoint .json / .safetensors, or an
        exported .onnx / .xml. ``precision`` (OpenVINO only): None for its default (bf16 on CPUs
        that have it), "f32" to force float32. ``threads``: onnxruntime / OpenVINO threads.
        ``device`` (torch): auto (a GPU if there is one), cpu, cuda, cuda:1, ..."""
        device = str(resolve_device(device))  # a device that is not there: a clear error
        runtime, metadata = load_runtime(path, backend, device, tag, precision, threads)
        return cls(runtime, metadata)

    @property
    def backend(self) -> str:
        return self.runtime.backend

    @property
    def takes_label_states(self) -> bool:
        return bool(self.runtime.takes_label_states)

    def describe(self) -> str:
        weights = getattr(self.runtime, "weights", "fp32")
        return f"{self.backend}, {weights} weights, computing in {self.runtime.compute}"

    def _tensor(self, image: str | Path | Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            image = load_rgb(image, max_pixels=self.max_pixels)
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
                raise DataError(f"an image array must be HxWx3 (or 4) uint8, got {image.shape} "
                                f"{image.dtype}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise DataError(f"cannot predict on a {type(image).__name__}; give a path, a PIL image "
                            f"or an array")
        return self.transform(to_rgb(image))

    def label_states(self, known: Known, count: int, stacklevel: int = 2) -> np.ndarray | None:
        """(count, C) float32 label states from ``known`` (one dict for every image, or one per
        image): 1 known present, 0 known absent, -1 unknown; None when nothing is known or the
        model cannot use it (with a ``KnownLabelsIgnored`` warning)."""
        if known is None:
            return None
        rows = [known] * count if isinstance(known, Mapping) else list(known)
        if len(rows) != count:
            raise DataError(f"known labels: {len(rows)} dicts for {count} images (give one dict for "
                            f"all images, or one per image)")
        index = {name: j for j, name in enumerate(self.label_names)}
        states = np.full((count, len(self.label_names)), -1.0, dtype=np.float32)
        strangers: list[str] = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise DataError(f"known labels: expected a dict of label -> 1/0, got "
                                f"{type(row).__name__}")
            for name, value in row.items():
                name = label_name(name)
                if name not in index:
                    strangers.append(str(name))
                    continue
                key = value if isinstance(value, str) else _number(value)
                if key not in _STATE_VALUES:
                    raise DataError(f"known label {name!r}: value {value!r} is not 1 (present), "
                                    f"0 (absent) or -1 (unknown)")
                states[i, index[name]] = _STATE_VALUES[key]
        if strangers:
            unique = sorted(set(strangers))
            hints = [f"{n!r}{did_you_mean(n, self.label_names)}" for n in unique[:10]]
            raise DataError(f"known labels not among this model's {len(self.label_names)} labels: "
                            f"{', '.join(hints)}" + (" ..." if len(unique) > 10 else ""))
        if not self.takes_label_states:
            head = self.metadata.get("model", {}).get("head", "this")
            warnings.warn(f"the {head} head takes no label states: the known labels have no effect "
                          f"on its predictions (only heads such as ctran use them)",
                          KnownLabelsIgnored, stacklevel=stacklevel)
            return None
        return states

    def scores(self, images: Sequence[Any], batch_size: int = 32, known: Known = None) -> np.ndarray:
        """Probabilities, shape (len(images), num_labels)."""
        return self._scores(images, batch_size, self.label_states(known, len(images), 3))[0]

    def _scores(self, images: Sequence[Any], batch_size: int, states: np.ndarray | None,
                on_bad: str = "error", progress: bool = False) -> tuple[np.ndarray, list[int]]:
        """(scores, the indices of ``images`` they belong to): under ``on_bad="skip"`` images that
        cannot be read are left out, each with an ImageSkipped warning."""
        if on_bad not in ("error", "skip"):
            raise DataError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
        out, kept = [], []
        bar = tqdm(total=len(images), desc="predict", unit="image", disable=not progress,
                   leave=False, mininterval=1.0)
        for start in range(0, len(images), batch_size):
            bar.update(min(batch_size, len(images) - start))
            tensors, rows = [], []
            for i in range(start, min(start + batch_size, len(images))):
                try:
                    tensors.append(self._tensor(images[i]))
                except DataError as e:
                    if on_bad != "skip":
                        raise
                    warnings.warn(str(e), ImageSkipped, stacklevel=3)
                    continue
                rows.append(i)
            if not tensors:
                continue
            states_rows = None if states is None else states[rows]
            out.append(self.runtime(torch.stack(tensors).numpy(), states_rows))
            kept += rows
        bar.close()
        if not out:
            return np.zeros((0, len(self.label_names))), kept
        return np.concatenate(out).astype(np.float64), kept

    def predict(self, images: Sequence[Any] | str | Path, batch_size: int = 32,
                known: Known = None, on_bad: str = "error", progress: bool = False
                ) -> list[dict[str, Any]]:
        """One dict per image: ``image``, ``labels`` (decided positive, best first), ``scores``.
        ``on_bad="skip"``: images that cannot be read are left out (an ImageSkipped warning each)."""
        if isinstance(images, (str, Path)):
            images = [images]
        scores, kept = self._scores(images, batch_size, self.label_states(known, len(images), 3),
                                    on_bad, progress)
        results = []
        chosen = decide(scores, self.thresholds, self.min_labels)
        for image, row, yes in zip((images[i] for i in kept), scores, chosen):
            order = np.argsort(-row, kind="stable")
            results.append({
                "image": str(image) if isinstance(image, (str, Path)) else None,
                "labels": [self.label_names[j] for j in order if yes[j]],
                "scores": {self.label_names[j]: float(row[j]) for j in order},
            })
        return results


def _number(value: Any) -> Any:
    """1, 0, -1 from ints, bools and integral floats; anything else unchanged (then refused)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() else value
