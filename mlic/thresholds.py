"""``mlic tune-thresholds``: per-class F1-optimal decision thresholds, stored with the model.

The scores come from a clean pass: evaluation transforms only, every image once, in order. The
paper's code tuned on the *augmented*, shuffled training loader (with drop_last), which biases the
thresholds towards augmented images; we do not. Tuning on the training split is the paper's
choice and works when train and test look alike; on a held-out split (``--split val``) it is safer
when they differ (the paper's VG500 row got worse with train-tuned thresholds, its Table 10).

Thresholds go to ``<run>/thresholds.json`` and into ``checkpoints/best.json``, which ``predict``,
``eval`` and exports read; the run's ``report.html`` is rewritten to show them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mlic.data.dataset import check_images
from mlic.data.formats import load_table
from mlic.data.transforms import eval_transform
from mlic.engine.checkpoint import load_model, read_metadata, write_json
from mlic.engine.evaluate import predict_scores
from mlic.engine.assembly import resolve_device
from mlic.engine.splits import make_loader
from mlic.errors import ConfigError
from mlic.metrics import threshold_metrics, tune_thresholds
from mlic.report import write_report_or_warn
from mlic.run_folder import resolve_checkpoint, run_split


def tune_run_thresholds(run: str | Path, split: str = "train",
                        data: str | Path | Mapping[str, Any] | None = None, batch_size: int = 64,
                        device: str = "auto", num_workers: int = 2, progress: bool = True
                        ) -> dict[str, Any]:
    """Tune on ``split`` of the run's config (or on ``data``); returns a summary and saves."""
    run = Path(run)
    model, meta = load_model(run, "best")
    if data is None:
        _, data = run_split(run, split, hint="; pass --data")
    table = load_table(data).with_labels(meta["label_names"], "negative")
    check_images(table, "exists", progress)
    dev = resolve_device(device)
    model.to(dev)
    loader = make_loader(table, eval_transform(model.preprocessing), batch_size, num_workers, False)
    # The probabilities: thresholds apply to them (the logits only rank, for mAP).
    scores, _, targets = predict_scores(model, loader, dev, desc=f"scores on {split}",
                                        progress=progress)
    thresholds = tune_thresholds(scores, targets, default=0.5)
    before = threshold_metrics(scores, targets, 0.5)
    after = threshold_metrics(scores, targets, thresholds)
    summary = {"split": split, "source": table.source, "num_images": len(table),
               "thresholds": {n: float(t) for n, t in zip(meta["label_names"], thresholds)},
               "on_tuning_split": {"at_0.5": {k: float(before[k]) for k in ("CF1", "OF1", "mean_F1")},
                                   "tuned": {k: float(after[k]) for k in ("CF1", "OF1", "mean_F1")}}}
    write_json(run / "thresholds.json", summary)
    set_model_thresholds(run, thresholds.tolist())
    write_report_or_warn(run)  # the report's threshold section; a failure only warns
    return summary


def set_model_thresholds(run: str | Path, thresholds: list[float] | float) -> None:
    """Write thresholds into the best checkpoint's JSON (atomically)."""
    meta_path = resolve_checkpoint(run, "best")
    meta = read_metadata(meta_path)  # the weights' own metadata, even after a torn save
    if isinstance(thresholds, list) and len(thresholds) != len(meta["label_names"]):
        raise ConfigError(f"{len(thresholds)} thresholds for {len(meta['label_names'])} labels")
    meta["thresholds"] = thresholds
    write_json(meta_path, meta)


def model_thresholds(meta: Mapping[str, Any]) -> np.ndarray | None:
    """Per-class thresholds of a model if it has tuned ones, else None."""
    value = meta.get("thresholds")
    return np.asarray(value, dtype=np.float64) if isinstance(value, list) else None
