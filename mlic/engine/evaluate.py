"""Scores of a model over a loader, and the metrics report built from them.

Scores are gathered for the whole split before any metric is computed: mAP is a ranking over all
images, and an average of per-batch (or per-rank) mAPs is a different, wrong number.

Scores are float32 (as the model gives them), filled into one preallocated array per output; the
metrics convert a chunk of classes at a time to float64, never the whole split.

mAP ranks the logits: a float32 sigmoid is exactly 1.0 for every logit above about 17,
so ranking probabilities would order a cosine head's (s = 23) most confident images by their index
in the split. Thresholds apply to the probabilities.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from mlic.data.transforms import batch_to_device
from mlic.engine.score_rows import ScoreRows
from mlic.metrics import mean_average_precision, per_class_prf, summarise_prf
from mlic.models import MultiLabelClassifier


def autocast(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class Scores(NamedTuple):
    """A model's outputs over a split, (N, C) each, in loader order: probabilities for thresholds,
    logits for ranking (mAP), targets."""

    probabilities: np.ndarray
    logits: np.ndarray
    targets: np.ndarray


def expected_rows(loader) -> int:
    """The rows a loader will yield, to size the arrays: its sampler's or dataset's length, else a
    guess (its number of batches; ``ScoreRows`` grows when the guess is short)."""
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "__len__"):
        return len(sampler)
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return len(loader) if hasattr(loader, "__len__") else 1


@torch.no_grad()
def predict_scores(model: MultiLabelClassifier, loader, device: torch.device, amp: bool = False,
                   channels_last: bool = False, desc: str = "eval", progress: bool = True,
                   label_states: np.ndarray | None = None, folder: Path | None = None) -> Scores:
    """Probabilities, logits (both float32) and targets (int8) over the loader, in loader order.

    ``label_states`` (N, C), in loader order: labels known for each image (1/0, else -1), given to
    models that take them (C-Tran); other models ignore them. ``folder``: where the probabilities
    and logits of a large split are kept as memory-mapped files (``mlic.engine.score_rows``)."""
    was_training = model.training
    model.eval()
    rows = expected_rows(loader)
    probabilities, logits, targets = score_arrays(rows, folder)
    offset = 0
    for images, target in tqdm(loader, desc=desc, leave=False, disable=not progress,
                               mininterval=2.0):
        states = None
        if label_states is not None:
            states = torch.as_tensor(label_states[offset:offset + len(target)], dtype=torch.float32,
                                     device=device)
            offset += len(target)
        with autocast(device, amp):
            output = model(batch_to_device(images, device, channels_last), states)
        probabilities.append(model.probabilities(output).float().cpu().numpy())
        logits.append(output.float().cpu().numpy())
        targets.append(target.numpy())
    model.train(was_training)
    return Scores(probabilities.array(), logits.array(), targets.array())


def score_arrays(rows: int, folder: Path | None = None) -> tuple[ScoreRows, ScoreRows, ScoreRows]:
    """Empty float32 probabilities and logits (memory-mapped in ``folder`` if large) and int8
    targets, for about ``rows`` rows."""
    def path(name: str) -> Path | None:
        return None if folder is None else Path(folder) / f"{name}.npy"
    return (ScoreRows(rows, np.float32, path("probabilities")),
            ScoreRows(rows, np.float32, path("logits")), ScoreRows(rows, np.int8))


def metrics_report(probabilities: np.ndarray, targets: np.ndarray, label_names: list[str],
                   thresholds: float | np.ndarray = 0.5, empty_classes: str = "skip",
                   tuned_thresholds: np.ndarray | None = None,
                   ranking: np.ndarray | None = None) -> dict[str, Any]:
    """mAP, CP/CR/CF1, OP/OR/OF1 and per-class AP; unknown (-1) targets are left out everywhere.

    mAP ranks ``ranking`` (the logits, unsaturated; default: the probabilities), the thresholded
    metrics use the probabilities. With ``tuned_thresholds`` those are also given at the tuned
    thresholds (the paper's "adapt" columns) under ``report["tuned"]``.

    Float32 inputs are not copied: the metrics work one chunk of classes at a time, in float64
    there (``mlic.metrics``), so memory stays bounded whatever the split's size.
    """
    ranking = probabilities if ranking is None else ranking
    ap = mean_average_precision(ranking, targets, empty=empty_classes)
    report: dict[str, Any] = {"mAP": float(ap.map)}
    at_thresholds = per_class_prf(probabilities, targets, thresholds)
    report.update(summarise_prf(at_thresholds))
    report["threshold"] = thresholds if np.isscalar(thresholds) else "per-class"
    if tuned_thresholds is not None:
        report["tuned"] = summarise_prf(per_class_prf(probabilities, targets, tuned_thresholds))
    report["num_images"] = int(len(probabilities))
    report["empty_classes"] = [label_names[j] for j in ap.empty_classes]
    positives = at_thresholds.n_positive
    report["per_class"] = [
        {"label": name, "AP": None if np.isnan(ap.per_class[j]) else float(ap.per_class[j]),
         "positives": int(positives[j])}
        for j, name in enumerate(label_names)]
    return report


def format_report(report: dict[str, Any], per_class: int = 10) -> str:
    at = report.get("threshold", 0.5)
    at = f"threshold {at}" if not isinstance(at, str) else "per-class thresholds"
    lines = [f"mAP {100 * report['mAP']:.2f}  over {report['num_images']} images; at {at}:"]
    lines.append("  ".join(f"{k} {100 * report[k]:.2f}" for k in ("CP", "CR", "CF1")) +
                 f"  (mean per-class F1 {100 * report['mean_F1']:.2f})")
    lines.append("  ".join(f"{k} {100 * report[k]:.2f}" for k in ("OP", "OR", "OF1")))
    if report.get("tuned"):
        tuned = report["tuned"]
        lines.append("with tuned per-class thresholds: " + "  ".join(
            f"{k} {100 * tuned[k]:.2f}" for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")))
    if report["empty_classes"]:
        names = report["empty_classes"]
        lines.append(f"{len(names)} classes have no positives here and are left out of mAP: "
                     + ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))
    rows = sorted((r for r in report["per_class"] if r["AP"] is not None), key=lambda r: r["AP"])
    if per_class and rows:
        def table(items):
            return "\n".join(f"    {r['label'][:28]:<28} AP {100 * r['AP']:6.2f}  ({r['positives']} pos)"
                             for r in items)
        if len(rows) <= 2 * per_class:
            lines.append("  per-class AP:\n" + table(rows[::-1]))
        else:
            lines.append(f"  best {per_class} classes:\n" + table(rows[::-1][:per_class]))
            lines.append(f"  worst {per_class} classes:\n" + table(rows[:per_class]))
    return "\n".join(lines)
