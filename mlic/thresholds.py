"""``mlic tune-thresholds``: the model's decision rule, chosen on held-out data, stored with it.

Per-class F1-optimal thresholds with a global fallback for classes with few positives, and at least
one label per image (``mlic.decisions``). The scores come from a clean pass: evaluation transforms
only, every image once, in order. By default they are tuned on the run's validation split: tuned on
the images the model was trained on, thresholds fit what it memorised and leave many new images
without a label (benchmarks/results/decisions.md measures both on the emoji benchmark). A run
without a validation split needs ``--data`` (held-out annotations) or an explicit ``--split train``.

Thresholds go to ``<run>/thresholds.json`` and into ``checkpoints/best.json``, which ``predict``,
``eval`` and exports read; the run's ``report.html`` is rewritten to show them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mlic.data.dataset import check_images
from mlic.data.formats import load_table
from mlic.data.transforms import eval_transform
from mlic.decisions import MIN_POSITIVES
from mlic.engine.checkpoint import load_model
from mlic.engine.decision_rule import choose_rule
from mlic.engine.evaluate import predict_scores
from mlic.engine.assembly import resolve_device
from mlic.engine.splits import make_loader
from mlic.errors import ConfigError
from mlic.label_alignment import align_labels
from mlic.report import write_report_or_warn
from mlic.run_folder import run_split


def tune_run_thresholds(run: str | Path, split: str | None = None,
                        data: str | Path | Mapping[str, Any] | None = None, batch_size: int = 64,
                        device: str = "auto", num_workers: int = 2, progress: bool = True,
                        min_labels: int = 1, min_positives: int = MIN_POSITIVES) -> dict[str, Any]:
    """Tune on ``split`` of the run's config (default: its validation split) or on ``data``;
    returns a summary (what each rule gives on the tuning data) and saves the rule."""
    run = Path(run)
    if min_labels < 0:  # before any scoring
        raise ConfigError(f"min_labels must be 0 or more, got {min_labels}")
    model, meta = load_model(run, "best")
    if data is None:
        split, data = run_split(run, split or "val", hint=_no_split_hint(split))
    else:
        split = split or "data"
    table = load_table(data)
    align_labels(table.label_names, meta["label_names"]).check(table.source)
    table = table.with_labels(meta["label_names"], "negative")
    check_images(table, "exists", progress)
    dev = resolve_device(device)
    model.to(dev)
    loader = make_loader(table, eval_transform(model.preprocessing), batch_size, num_workers, False)
    # The probabilities: thresholds apply to them (the logits only rank, for mAP).
    scores, _, targets = predict_scores(model, loader, dev, desc=f"scores on {split}",
                                        progress=progress)
    summary = choose_rule(run, meta["label_names"], scores, targets, split, table.source,
                          min_labels, min_positives)
    write_report_or_warn(run)  # the report's threshold section; a failure only warns
    return summary


def _no_split_hint(split: str | None) -> str:
    if split:
        return "; pass --data"
    return ("; tune on held-out images with --data ANNOTATIONS (thresholds tuned on the images "
            "the model was trained on fit what it memorised), or on them anyway with --split train")

