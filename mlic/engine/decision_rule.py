"""A model's decision rule, chosen on held-out scores and stored with its weights.

Training chooses it at the end, on the validation split's scores of the selected weights
(``eval.tune_thresholds``); ``mlic tune-thresholds`` chooses it again on other data. Either way
the per-class thresholds (``mlic.decisions.choose_thresholds``) and the floor of labels per image
go into ``checkpoints/best.json``, which ``predict``, ``eval`` and the exports read, and the summary
(what each rule gives on the tuning data) into ``<run>/thresholds.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlic.decisions import (MIN_POSITIVES, choose_thresholds, describe_rule, positives_per_class,
                            positives_per_image, rule_metrics)
from mlic.engine.checkpoint import read_metadata, write_json
from mlic.errors import ConfigError
from mlic.run_folder import resolve_checkpoint

THRESHOLDS_FILE = "thresholds.json"


def choose_rule(run: str | Path, label_names: Sequence[str], probabilities: np.ndarray,
                targets: np.ndarray, split: str, source: str = "", min_labels: int = 1,
                min_positives: int = MIN_POSITIVES) -> dict[str, Any]:
    """Choose the rule on (probabilities, targets) of ``split``, store it with the run's best
    weights and return the summary written to ``<run>/thresholds.json``."""
    if min_labels < 0:
        raise ConfigError(f"min_labels must be 0 or more, got {min_labels}")
    run = Path(run)
    thresholds, fallback = choose_thresholds(probabilities, targets, min_positives)
    rules = {"at_0.5": (0.5, 0), "global": (fallback, 0), "tuned": (thresholds, min_labels)}
    positives = positives_per_class(targets)
    summary = {"split": split, "source": source, "num_images": int(len(targets)),
               "on_training_images": split == "train",
               "rule": describe_rule(thresholds, min_labels), "min_labels": min_labels,
               "global_threshold": fallback, "min_positives": min_positives,
               "fallback_labels": [n for n, k in zip(label_names, positives) if k < min_positives],
               "thresholds": {n: float(t) for n, t in zip(label_names, thresholds)},
               "on_tuning_split": {name: {k: float(v) for k, v in rule_metrics(
                   probabilities, targets, *rule).items()} for name, rule in rules.items()}}
    write_json(run / THRESHOLDS_FILE, summary)
    set_model_thresholds(run, thresholds.tolist(), min_labels)
    return summary


def set_model_thresholds(run: str | Path, thresholds: list[float] | float,
                         min_labels: int | None = None) -> None:
    """Write thresholds (and the labels-per-image floor) into the best checkpoint's JSON
    (atomically)."""
    meta_path = resolve_checkpoint(run, "best")
    meta = read_metadata(meta_path)  # the weights' own metadata, even after a torn save
    if isinstance(thresholds, list) and len(thresholds) != len(meta["label_names"]):
        raise ConfigError(f"{len(thresholds)} thresholds for {len(meta['label_names'])} labels")
    meta["thresholds"] = thresholds
    if min_labels is not None:
        meta["min_labels"] = int(min_labels)
    write_json(meta_path, meta)


def model_thresholds(meta: dict[str, Any]) -> np.ndarray | None:
    """Per-class thresholds of a model if it has tuned ones, else None."""
    value = meta.get("thresholds")
    return np.asarray(value, dtype=np.float64) if isinstance(value, list) else None


def model_rule(meta: dict[str, Any]) -> tuple[Any, int]:
    """(thresholds, min_labels) as ``predict`` applies them: the tuned per-class thresholds when
    the model has them, else its single threshold (0.5), and its floor of labels per image."""
    return meta.get("thresholds", 0.5), int(meta.get("min_labels", 1))


def decisions_block(probabilities: np.ndarray, targets: np.ndarray, thresholds: Any,
                    min_labels: int) -> dict[str, Any]:
    """The ``decisions`` entry of an evaluation report: the rule in words and what it gives."""
    return {"rule": describe_rule(thresholds, min_labels),
            "true_labels_per_image": positives_per_image(targets),
            **rule_metrics(probabilities, targets, thresholds, min_labels)}
