"""Explanation maps: where in an image a label's score comes from (``mlic explain``).

A map per label, the size of the image, in [0, 1] (1 where the label's evidence is strongest),
computed on the backbone's feature map (the model's input size over the backbone's stride, e.g. 14 x
14 at 448 px) and stretched over the image, which the model sees resized to a square:

* Heads that read the whole feature map at once (linear, cosine, the label-graph heads without a
  decoder): Recipro-CAM (Byun and Lee, "Recipro-CAM: Fast gradient-free visual explanations for
  convolutional neural networks", 2022). For each place p of the feature map F, the head is given F
  masked to a small Gaussian neighbourhood of p; the label's probability for that input is the
  map's value at p. It needs no gradients, only one batched pass of the head over H*W masked copies,
  and it asks the head itself what each place alone says about the label (Grad-CAM's gradient is
  a first-order guess at the same thing).
* Decoder heads (ML-Decoder, Query2Label, C-Tran): the attention weights of the label's query over
  the image tokens in the head's last attention layer, averaged over its attention heads: how much
  of each place the head reads for that label. ML-Decoder's queries each serve a group of labels
  (label c is read from query c // group_size), so labels of one group share a map; with one query
  per label (full decoding, the default up to 100 labels) each label has its own. C-Tran's label
  tokens attend to image and label tokens alike; the map is the image tokens' part.

``explain(run, images)`` writes one PNG overlay per image and label, and ``index.json`` listing
them, which the run's report shows; ``explain_examples`` takes the labels per image (``mlic explain
RUN`` without images maps the report gallery's lessons); ``Explainer`` gives the maps as arrays.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mlic.data.images import load_rgb
from mlic.data.transforms import eval_transform
from mlic.decisions import decide
from mlic.engine.assembly import resolve_device
from mlic.engine.checkpoint import load_model
from mlic.errors import ConfigError, did_you_mean
from mlic.engine.decision_rule import model_thresholds

METHODS = ("auto", "recipro_cam", "attention")
INDEX = "index.json"
OVERLAY_ALPHA = 0.5  # share of the colour map in an overlay
HEAD_BATCH = 256     # masked feature maps per head pass (Recipro-CAM)


@dataclass
class LabelMap:
    """One label's map on one image: ``heat`` has the image's (height, width), values in [0, 1]."""

    label: str
    probability: float
    heat: np.ndarray
    method: str


class Explainer:
    """Maps of a trained model: ``Explainer.load(run)(image, labels)`` -> ``LabelMap`` per label."""

    def __init__(self, model: nn.Module, label_names: Sequence[str],
                 thresholds: float | np.ndarray = 0.5, method: str = "auto", min_labels: int = 1):
        if method not in METHODS:
            raise ConfigError(f"explain method {method!r}: choose one of {', '.join(METHODS)}")
        self.model = model.eval()
        self.label_names = list(label_names)
        self.thresholds, self.min_labels = thresholds, min_labels  # the model's decision rule
        self.transform = eval_transform(model.preprocessing)
        has_attention = _attention_layer(model.head) is not None
        if method == "attention" and not has_attention:
            raise ConfigError(f"explain method 'attention': the {model.model_config['head']} head "
                              f"has no attention layer; use recipro_cam")
        self.method = method if method != "auto" else (
            "attention" if has_attention else "recipro_cam")

    @classmethod
    def load(cls, run: str | Path, method: str = "auto", tag: str = "best",
             device: str = "cpu") -> "Explainer":
        model, meta = load_model(run, tag)
        model.to(resolve_device(device))
        tuned = model_thresholds(meta)  # else the single evaluation threshold
        thresholds = tuned if tuned is not None else float(meta.get("thresholds", 0.5))
        return cls(model, meta["label_names"], thresholds, method, meta.get("min_labels", 1))

    def label_indices(self, labels: Iterable[str] | None, probabilities: np.ndarray) -> list[int]:
        """The labels asked for; by default those the model predicts (its decision rule, as
        ``mlic predict`` applies it), most probable first, or its most probable one if none."""
        if labels is None:
            chosen = np.flatnonzero(decide(probabilities[None], self.thresholds, self.min_labels)[0])
            chosen = chosen[np.argsort(-probabilities[chosen], kind="stable")]
            return chosen.tolist() or [int(np.argmax(probabilities))]
        index = {name: i for i, name in enumerate(self.label_names)}
        out = []
        for name in labels:
            if name not in index:
                raise ConfigError(f"label {name!r} is not one of the model's "
                                  f"{len(self.label_names)} labels{did_you_mean(name, index)}")
            out.append(index[name])
        return out

    @torch.no_grad()
    def __call__(self, image: str | Path | Image.Image, labels: Iterable[str] | None = None
                 ) -> list[LabelMap]:
        picture = load_rgb(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        x = self.transform(picture).unsqueeze(0)
        device = next(self.model.parameters()).device
        features = self.model.backbone(x.to(device))
        if self.method == "attention":
            logits, grids = _attention_maps(self.model.head, features)
        else:
            logits, grids = self._head(features), None
        probabilities = torch.sigmoid(logits.float())[0].cpu().numpy()
        chosen = self.label_indices(labels, probabilities)
        if grids is None:
            grids = recipro_cam(self._head, features, chosen)
        else:
            grids = grids[chosen]
        heat = _stretch(grids, (picture.height, picture.width))
        return [LabelMap(self.label_names[c], float(probabilities[c]), heat[k], self.method)
                for k, c in enumerate(chosen)]

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        head = self.model.head
        return head(features, None) if getattr(head, "takes_label_states", False) else head(features)


def recipro_cam(head, features: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """(len(classes), H, W): the probability ``head`` gives each class from the feature map
    ``features`` (1, D, H, W) masked to the neighbourhood of each place, min-max scaled to [0, 1]."""
    _, _, height, width = features.shape
    masks = _neighbourhood_masks(height, width).to(features)  # (HW, H, W)
    scores = []
    for start in range(0, len(masks), HEAD_BATCH):
        masked = features * masks[start:start + HEAD_BATCH, None]  # (n, D, H, W)
        scores.append(torch.sigmoid(head(masked).float())[:, list(classes)])
    grid = torch.cat(scores).T.reshape(len(classes), height, width)
    return _scale(grid)


def _neighbourhood_masks(height: int, width: int) -> torch.Tensor:
    """(H*W, H, W): for place p, exp(-|q - p|^2 / 2) on p's 3 x 3 neighbourhood q, else 0 (the
    place itself weighs 1, its neighbours 0.61 and 0.37: a place is read with a little context)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dy = ys.reshape(-1, 1, 1) - ys.unsqueeze(0)
    dx = xs.reshape(-1, 1, 1) - xs.unsqueeze(0)
    near = (dy.abs() <= 1) & (dx.abs() <= 1)
    return torch.exp(-(dy ** 2 + dx ** 2).float() / 2) * near


def _attention_layer(head: nn.Module) -> tuple[nn.MultiheadAttention, str] | None:
    """The head's last attention over the image: (layer, kind), kind "cross" (ML-Decoder and
    Query2Label: queries attend to image tokens) or "self" (C-Tran: one sequence of image tokens,
    then label tokens); None for heads without attention."""
    found = None
    for name, module in head.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            kind = name.rsplit(".", 1)[-1]
            if kind == "cross_attn" or (kind == "self_attn"
                                        and getattr(head, "takes_label_states", False)):
                found = (module, kind.split("_")[0])
    return found


def _attention_maps(head: nn.Module, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's logits (1, C) and each label's attention over the feature map (C, H, W), in
    [0, 1]; the attention weights are recomputed from the layer's own inputs, caught by a hook (the
    heads call it without weights, the fast path)."""
    layer, kind = _attention_layer(head)
    _, _, height, width = features.shape
    seen: list[tuple] = []
    hook = layer.register_forward_hook(lambda module, args, output: seen.append(args[:3]))
    try:
        logits = head(features, None) if kind == "self" else head(features)
    finally:
        hook.remove()
    query, key, value = seen[-1]
    weights = layer.forward(query, key, value, need_weights=True, average_attn_weights=True)[1][0]
    classes = logits.shape[1]
    if kind == "self":  # rows: HW image tokens, then C label tokens; the label tokens' image part
        rows = weights[height * width:, :height * width]
    else:
        group = next((m.group_size for m in head.modules() if hasattr(m, "group_size")), 1)
        rows = weights[torch.arange(classes, device=weights.device) // group]
    return logits, _scale(rows.reshape(classes, height, width).float())


def _scale(grid: torch.Tensor) -> torch.Tensor:
    """Each map min-max scaled to [0, 1]; a flat map (nothing stands out) is all 0."""
    low = grid.flatten(1).min(1).values[:, None, None]
    span = grid.flatten(1).max(1).values[:, None, None] - low
    return torch.where(span > 0, (grid - low) / span.clamp_min(1e-12), torch.zeros_like(grid))


def _stretch(grids: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) feature-map grids to (K, height, width) over the image (bilinear), in [0, 1]."""
    heat = F.interpolate(grids[:, None].float().cpu(), size=size, mode="bilinear",
                         align_corners=False)[:, 0]
    return heat.clamp(0, 1).numpy()


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The image with the map drawn over it in a colour scale (blue: low, red: high)."""
    from matplotlib import colormaps
    colours = colormaps["jet"](heat)[..., :3]
    picture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return Image.fromarray(np.uint8(255 * ((1 - alpha) * picture + alpha * colours) + 0.5))


def file_name(text: str, limit: int = 60) -> str:
    """A label or image name as a safe file name part (labels may hold '/', '..', spaces)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:limit].strip("._") or "_"


def output_folder(run: str | Path, out: str | Path | None) -> Path:
    """``out``, or by default the run folder's ``explain/`` (where its report finds the maps)."""
    if out is not None:
        return Path(out)
    if not Path(run).is_dir():
        raise ConfigError(f"{run}: not a run folder; say where the maps go (--output)")
    return Path(run) / "explain"


def explain(run: str | Path, images: Sequence[str | Path], labels: Iterable[str] | None = None,
            out: str | Path | None = None, method: str = "auto", tag: str = "best",
            device: str = "cpu") -> list[dict[str, Any]]:
    """Maps of the run's model for each image (of ``labels``, by default those it predicts), saved
    as PNG overlays under ``out`` (default ``<run>/explain``): ``<nnnn>_<image>/<label index>_
    <label>.png``, with ``index.json`` listing image, label, probability, method and file.
    Returns the listing."""
    labels = list(labels) if labels is not None else None
    return explain_examples(run, [(path, labels) for path in images], out, method, tag, device)


def explain_examples(run: str | Path, examples: Sequence[tuple[str | Path, Sequence[str] | None]],
                     out: str | Path | None = None, method: str = "auto", tag: str = "best",
                     device: str = "cpu") -> list[dict[str, Any]]:
    """``explain`` with the labels chosen per image: (image, labels or None) pairs, such as the
    report gallery's lessons (``mlic.report.teaching_examples``)."""
    out = output_folder(run, out)
    explainer = Explainer.load(run, method, tag, device)
    out.mkdir(parents=True, exist_ok=True)
    index = {name: i for i, name in enumerate(explainer.label_names)}
    entries = []
    for n, (path, labels) in enumerate(examples):
        picture = load_rgb(path)
        folder = out / f"{n:04d}_{file_name(Path(path).stem)}"
        folder.mkdir(exist_ok=True)
        for found in explainer(picture, labels):
            name = f"{index[found.label]:04d}_{file_name(found.label)}.png"
            overlay(picture, found.heat).save(folder / name)
            entries.append({"image": str(path), "label": found.label,
                            "probability": round(found.probability, 4), "method": found.method,
                            "file": f"{folder.name}/{name}"})
    (out / INDEX).write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    return entries
