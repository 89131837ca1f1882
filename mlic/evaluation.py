"""``mlic eval``: metrics of a saved or exported model on a split, kept beside the run.

The model is a run folder, a checkpoint, or an exported ``.onnx`` / ``.xml`` (FP32 or INT8, run by
onnxruntime or OpenVINO). By default the run's own test split (else its validation split) is
used; ``data`` takes any split spec instead.

Every evaluation is kept, named after what it scored: ``eval_<split>.json`` for the run's own
splits, ``eval_<name>.json`` for other data, where the name is the user's or the data file's stem
(``eval_test.json`` is only ever the run's own test split; a second data file of the same stem gets
``-2``). An exported model's evaluation adds the file's name: ``eval_test_model_int8_onnx.json``
(``model_int8.xml``: ``eval_test_model_int8_xml.json``).

The data's label names are matched against the model's first (``mlic.label_alignment``): too few in
common is an error, not a silently different score. Labels the data lacks count as negative for
every image (and so drop out of mAP); labels the model lacks are ignored.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from mlic.data.dataset import check_images
from mlic.data.formats import load_table
from mlic.data.transforms import eval_transform
from mlic.engine.decision_rule import decisions_block, model_rule, model_thresholds
from mlic.engine.checkpoint import load_model, write_json
from mlic.engine.evaluate import (Scores, expected_rows, metrics_report, predict_scores,
                                  score_arrays)
from mlic.engine.label_mask import evaluation_label_states, unknown_only
from mlic.engine.assembly import resolve_device
from mlic.engine.splits import SPLITS, make_loader
from mlic.errors import ConfigError
from mlic.label_alignment import align_labels
from mlic.preprocessing import Preprocessing
from mlic.predictions import predictions_file, save_predictions
from mlic.report import write_report_or_warn
from mlic.run_folder import CHECKPOINTS, is_run_folder, run_split
from mlic.spreadsheet import safe_row

EXPORTED = (".onnx", ".xml")
SCORES_DIR = ".eval_scores"  # in the run: a large split's scores, memory-mapped, removed after


def evaluate(run: str | Path, data: str | Path | Mapping[str, Any] | None = None,
             split: str | None = None, thresholds: float | str | None = None,
             empty_classes: str = "skip", batch_size: int = 64, device: str = "auto",
             num_workers: int = 2, tag: str = "best", progress: bool = True,
             known_fraction: float = 0.0, name: str | None = None,
             allow_label_subset: bool = False, backend: str | None = None) -> dict[str, Any]:
    """Evaluate; returns the report (also written to ``<run>/eval_<name>.json`` when the model
    belongs to a run folder, and shown in the run's ``report.html``, which is rewritten).

    ``split``: which of the run's splits (default test, else val); ``data``: other annotations
    instead, the evaluation named ``name`` (default: the file's stem). ``allow_label_subset``:
    score the labels the data and the model share even when they are few.

    ``known_fraction`` > 0: the partial-label protocol (``mlic.engine.label_mask``): that share of
    each image's labels is known (the same set for every model), given to models that take known
    labels (C-Tran), and every metric is computed over the other entries only; the name gets
    ``_known<percent>``.

    ``thresholds``: a number (default 0.5) for the main columns; when the model has tuned
    per-class thresholds, the report also gives the metrics at those (``report["tuned"]``), and
    always those of the model's decisions as ``predict`` makes them, at least ``min_labels``
    per image included (``report["decisions"]``: labels per image, images left without one).
    """
    if not 0 <= known_fraction < 1:
        raise ConfigError(f"known fraction must be in [0, 1), got {known_fraction}")
    run = Path(run)
    exported = run.suffix.lower() in EXPORTED
    folder = owning_run(run)
    own_split = data is None
    if own_split:
        if folder is None:
            raise ConfigError(f"{run}: not in a run folder, so there is no split to evaluate "
                              f"on; pass --data")
        if name:
            raise ConfigError("--name names an evaluation of other data (--data); the run's own "
                              "splits keep their names")
        name, data = run_split(folder, *([split] if split else ["test", "val"]),
                               hint="; pass --data")
    elif split:
        raise ConfigError("--split picks one of the run's own splits; to evaluate other data "
                          "give --data alone, and --name to name the evaluation")
    table = load_table(data)
    if not own_split:
        name = data_evaluation_name(table.source or str(data), folder, name)
    model, meta, runtime = _load(run, tag, device, backend)
    alignment = align_labels(table.label_names, meta["label_names"])
    alignment.check(table.source, allow_label_subset)
    table = table.with_labels(meta["label_names"], "negative")
    check_images(table, "exists", progress)
    tuned = model_thresholds(meta)
    if thresholds is None or thresholds == "model":
        thresholds = 0.5
    preprocessing = model.preprocessing if model is not None else \
        Preprocessing.from_dict(meta["preprocessing"])
    loader = make_loader(table, eval_transform(preprocessing), batch_size, num_workers, False)
    states = None
    if known_fraction > 0:
        states = evaluation_label_states(table.paths, table.targets, known_fraction)
    spill = None if folder is None else folder / SCORES_DIR
    if model is not None:
        dev = resolve_device(device)
        model.to(dev)
        scores = predict_scores(model, loader, dev, desc=f"eval {name}", progress=progress,
                                label_states=states, folder=spill)
    else:
        scores = runtime_scores(runtime, loader, states, f"eval {name}", progress, spill)
    targets = scores.targets
    if states is not None:
        targets = unknown_only(targets, states)
        name = f"{name}_known{round(100 * known_fraction)}"
    if exported:
        # The file's name with its format: model.onnx and model.xml are two evaluations.
        name = f"{name}_{_slug(run.stem)}_{run.suffix[1:].lower()}"
    report = metrics_report(scores.probabilities, targets, meta["label_names"], float(thresholds),
                            empty_classes, tuned_thresholds=tuned, ranking=scores.logits)
    # What predict gives: the model's rule, with its floor of labels per image.
    report["decisions"] = decisions_block(scores.probabilities, targets, *model_rule(meta))
    report["split"], report["source"] = name, table.source
    report["model"] = str(run)
    report["labels"] = alignment.as_dict()
    report["known_fraction"] = float(known_fraction)
    report["uses_known_labels"] = bool(model.takes_label_states if model is not None
                                       else runtime.takes_label_states)
    if folder is not None:
        write_json(folder / f"eval_{name}.json", report)
        save_predictions(predictions_file(folder, name), [str(table.image_path(i)) for i in
                                                          range(len(table))],
                         meta["label_names"], scores.probabilities, targets)
        with open(folder / f"per_class_ap_{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "AP", "positives"])
            writer.writerows(safe_row((row["label"], row["AP"], row["positives"]))
                             for row in report["per_class"])
        report["written"] = str(folder / f"eval_{name}.json")
        write_report_or_warn(folder)  # the run's report.html shows the new evaluation; never fails it
    del scores, targets  # release the memory maps before their files go
    if spill is not None:
        shutil.rmtree(spill, ignore_errors=True)
    return report


def owning_run(model: Path) -> Path | None:
    """The run folder a model belongs to: itself, or the run of a checkpoint or of an export in
    ``RUN/export/``; None for a file on its own."""
    if model.is_dir():
        return model.parent if model.name == CHECKPOINTS else model
    return next((p for p in (model.parent, model.parent.parent) if is_run_folder(p)), None)


def data_evaluation_name(source: str, run: Path | None, name: str | None) -> str:
    """The name of an evaluation of other data: ``name``, else the stem of its annotation file
    ``source``; never one of the run's split names, and never that of an earlier evaluation of
    other data (which gets ``-2``, ``-3``, ...)."""
    if name:
        if _slug(name) != name:
            raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
        if name in SPLITS:
            raise ConfigError(f"--name {name!r} is the name of one of the run's own splits; "
                              f"choose another")
        return name
    path = Path(source)
    base = _slug(path.stem if path.suffix else path.name) or "data"
    if base in SPLITS:
        base = f"{base}-data"
    candidate, n = base, 1
    while run is not None and (earlier := run / f"eval_{candidate}.json").is_file():
        try:
            if json.loads(earlier.read_text(encoding="utf-8")).get("source") == source:
                break  # the same data again: a new evaluation of it replaces the old
        except (OSError, ValueError):
            pass
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")


def _load(model: Path, tag: str, device: str, backend: str | None):
    """(torch model or None, metadata, runtime or None): a run or checkpoint runs in PyTorch
    unless another ``backend`` is asked for; an exported file on its runtime."""
    if model.suffix.lower() not in EXPORTED and backend in (None, "torch"):
        loaded, meta = load_model(model, tag)
        return loaded, meta, None
    from mlic.export.runtime import load_runtime
    runtime, meta = load_runtime(model, backend, str(resolve_device(device)), tag)
    runtime.num_classes = len(meta["label_names"])
    return None, meta, runtime


def runtime_scores(runtime, loader, states: np.ndarray | None, desc: str, progress: bool,
                   folder: Path | None = None) -> Scores:
    """``predict_scores`` through an exported model's runtime: probabilities, and logits when the
    graph has them (mAP ranks them: probabilities saturate), else the probabilities again.
    float32, preallocated, memory-mapped in ``folder`` when large (as ``predict_scores``)."""
    logits_out = "logits" in getattr(runtime, "output_names", ["logits"])
    probabilities, logits, targets = score_arrays(expected_rows(loader), folder)
    offset = 0
    for images, target in tqdm(loader, desc=desc, leave=False, disable=not progress,
                               mininterval=2.0):
        batch = images.numpy()
        rows = None if states is None else states[offset:offset + len(target)].astype(np.float32)
        offset += len(target)
        batch_probabilities = runtime(batch, rows)
        probabilities.append(batch_probabilities)
        logits.append(runtime(batch, rows, output="logits") if logits_out else batch_probabilities)
        targets.append(target.numpy())
    return Scores(probabilities.array(), logits.array(), targets.array())
