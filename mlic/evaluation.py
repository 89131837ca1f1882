"""``mlic eval``: metrics of a saved model on a split, written beside the run.

By default the run's own test split (else its validation split) is used; ``data`` takes any split
spec instead. The split's labels are aligned to the model's label order; labels the model does
not know are ignored, labels the split lacks count as negative for every image.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from mlic.data.dataset import check_images
from mlic.data.formats import load_table
from mlic.data.transforms import eval_transform
from mlic.engine.checkpoint import load_model, write_json
from mlic.engine.evaluate import metrics_report, predict_scores
from mlic.engine.label_mask import evaluation_label_states, unknown_only
from mlic.engine.assembly import resolve_device
from mlic.engine.splits import make_loader
from mlic.errors import ConfigError
from mlic.predictions import predictions_file, save_predictions
from mlic.report import write_report_or_warn
from mlic.run_folder import run_split
from mlic.spreadsheet import safe_row
from mlic.thresholds import model_thresholds


def evaluate(run: str | Path, data: str | Path | Mapping[str, Any] | None = None,
             split: str | None = None, thresholds: float | str | None = None,
             empty_classes: str = "skip", batch_size: int = 64, device: str = "auto",
             num_workers: int = 2, tag: str = "best", progress: bool = True,
             known_fraction: float = 0.0) -> dict[str, Any]:
    """Evaluate; returns the report (also written to ``<run>/eval_<name>.json``, and shown in the
    run's ``report.html``, which is rewritten).

    ``known_fraction`` > 0: the partial-label protocol (``mlic.engine.label_mask``): that share of
    each image's labels is known (the same set for every model), given to models that take known
    labels (C-Tran), and every metric is computed over the other entries only; the report is written
    to ``eval_<name>_known<percent>.json``.

    ``thresholds``: a number (default 0.5) for the main columns; when the model has tuned
    per-class thresholds, the report also gives the metrics at those (``report["tuned"]``).
    """
    if not 0 <= known_fraction < 1:
        raise ConfigError(f"known fraction must be in [0, 1), got {known_fraction}")
    run = Path(run)
    model, meta = load_model(run, tag)
    name = split or "custom"
    if data is None:
        name, data = run_split(run, *([split] if split else ["test", "val"]), hint="; pass --data")
    table = load_table(data).with_labels(meta["label_names"], "negative")
    check_images(table, "exists", progress)
    tuned = model_thresholds(meta)
    if thresholds is None or thresholds == "model":
        thresholds = 0.5
    dev = resolve_device(device)
    model.to(dev)
    loader = make_loader(table, eval_transform(model.preprocessing), batch_size, num_workers, False)
    states = None
    if known_fraction > 0:
        states = evaluation_label_states(table.paths, table.targets, known_fraction)
    scores = predict_scores(model, loader, dev, desc=f"eval {name}", progress=progress,
                            label_states=states)
    targets = scores.targets
    if states is not None:
        targets = unknown_only(targets, states)
        name = f"{name}_known{round(100 * known_fraction)}"
    report = metrics_report(scores.probabilities, targets, meta["label_names"], float(thresholds),
                            empty_classes, tuned_thresholds=tuned, ranking=scores.logits)
    report["split"], report["source"] = name, table.source
    report["known_fraction"] = float(known_fraction)
    report["uses_known_labels"] = bool(model.takes_label_states)
    if run.is_dir():
        write_json(run / f"eval_{name}.json", report)
        save_predictions(predictions_file(run, name), [str(table.image_path(i)) for i in
                                                       range(len(table))],
                         meta["label_names"], scores.probabilities, targets)
        with open(run / f"per_class_ap_{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "AP", "positives"])
            writer.writerows(safe_row((row["label"], row["AP"], row["positives"]))
                             for row in report["per_class"])
        write_report_or_warn(run)  # the run's report.html shows the new evaluation; never fails it
    return report
