"""Prediction with a trained model: ``Predictor.load(run_dir).predict(images)``.

Images may be paths, PIL images or HxWx3 uint8 arrays; the preprocessing is the one saved with
the model, so predictions match what evaluation measured. Decisions use the model's thresholds
(one per class after threshold tuning, else the evaluation threshold).
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from mlic.data.images import load_rgb, to_rgb
from mlic.data.transforms import eval_transform
from mlic.engine.checkpoint import load_model
from mlic.errors import DataError
from mlic.models import MultiLabelClassifier

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def expand_image_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns -> image files, sorted."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
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


class Predictor:
    def __init__(self, model: MultiLabelClassifier, metadata: dict[str, Any], device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.metadata = metadata
        self.label_names: list[str] = list(metadata["label_names"])
        thresholds = metadata.get("thresholds", 0.5)
        self.thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64),
                                          (len(self.label_names),)).copy()
        self.transform = eval_transform(model.preprocessing)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", tag: str = "best") -> "Predictor":
        """From a run folder, its checkpoints folder, or a checkpoint .json / .safetensors."""
        model, metadata = load_model(path, tag)
        return cls(model, metadata, device)

    def _tensor(self, image: str | Path | Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(image, (str, Path)):
            image = load_rgb(image)
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
                raise DataError(f"an image array must be HxWx3 (or 4) uint8, got {image.shape} "
                                f"{image.dtype}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise DataError(f"cannot predict on a {type(image).__name__}; give a path, a PIL image "
                            f"or an array")
        return self.transform(to_rgb(image))

    @torch.no_grad()
    def scores(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Probabilities, shape (len(images), num_labels)."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self._tensor(im) for im in images[start:start + batch_size]])
            logits = self.model(batch.to(self.device))
            out.append(self.model.probabilities(logits).cpu().numpy())
        if not out:
            return np.zeros((0, len(self.label_names)))
        return np.concatenate(out).astype(np.float64)

    def predict(self, images: Sequence[Any] | str | Path, batch_size: int = 32) -> list[dict[str, Any]]:
        """One dict per image: ``image``, ``labels`` (decided positive, best first), ``scores``."""
        if isinstance(images, (str, Path)):
            images = [images]
        scores = self.scores(images, batch_size)
        results = []
        for image, row in zip(images, scores):
            order = np.argsort(-row, kind="stable")
            results.append({
                "image": str(image) if isinstance(image, (str, Path)) else None,
                "labels": [self.label_names[j] for j in order if row[j] >= self.thresholds[j]],
                "scores": {self.label_names[j]: float(row[j]) for j in order},
            })
        return results
