"""The run folder: where a training run keeps its config, log, metrics and checkpoints.

    runs/<name>/
      config.yaml          the resolved config: `mlic train --config runs/<name>/config.yaml` repeats it
      train.log            what was printed
      metrics.csv          one row per epoch
      checkpoints/         last.* (resume), best.* (the selected weights)
      eval_<split>.json    metrics of the selected weights (written by training and by `mlic eval`)
      thresholds.json      the decision rule: per-class thresholds chosen on the validation split
      val_held_out.csv     without data.val: the training images held out as the validation split
      (and labels.txt)     (data.val_fraction), with their labels; eval and tune-thresholds read it
      report.html, plots/  the run on one page, and its figures (mlic/report.py)
      export/              exported models (`mlic export`)

Everything that reads or writes a run folder finds its files here: training creates it
(``new_run_dir``), logs to it (``run_logger``) and appends its metrics; eval, tune-thresholds,
export and the report read its config (``run_config``) and its splits (``run_split``); predict,
eval and export find its weights (``resolve_checkpoint``; ``run_of_checkpoint`` the other way).
Nothing here knows how a run is trained, and nothing here imports the engine.
"""
from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from mlic.atomic import atomic_write
from mlic.data_paths import locate_data
from mlic.errors import ConfigError, WeightsError

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
HELD_OUT_VAL, HELD_OUT_LABELS = "val_held_out.csv", "labels.txt"

METRICS_COLUMNS = ["epoch", "steps", "lr", "train_loss", "skipped_steps", "clipped_steps", "val_mAP", "val_mAP_ema",
                   "selected", "best_mAP", "es_smooth", "es_wait", "attn_ratio", "image_share",
                   "skipped_images", "seconds"]


def new_run_dir(output_dir: str | Path, name: str | None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir) / (f"{name}-{stamp}" if name else stamp)
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    try:
        checkpoints_of(path).mkdir(parents=True)
    except OSError as e:  # output_dir a file, read-only, missing permissions, a full disk
        what = "is a file, not a folder" if Path(output_dir).is_file() else \
            f"cannot hold a new run folder ({e.strerror})"
        raise ConfigError(f"output_dir {output_dir} {what}; set output_dir to a folder mlic can "
                          f"write in") from None
    return path


def is_run_folder(path: str | Path) -> bool:
    """A folder written by ``mlic train``: it has a config.yaml or a checkpoints/best.json."""
    path = Path(path)
    return (path / CONFIG).is_file() or (path / CHECKPOINTS / "best.json").is_file()


def resolve_checkpoint(path: str | Path, tag: str = "best") -> Path:
    """A run folder, a checkpoints folder, or a checkpoint's .json/.safetensors -> its .json."""
    path = Path(path)
    candidates = []
    if path.is_dir():
        for folder in (path / CHECKPOINTS, path):
            candidates += [folder / f"{tag}.json", folder / "last.json"]
    elif path.suffix in (".json", ".safetensors"):
        candidates.append(path.with_suffix(".json"))
    for candidate in candidates:
        if candidate.is_file() and candidate.with_suffix(".safetensors").is_file():
            return candidate
    raise WeightsError(f"{path}: no checkpoint found (looked for "
                       f"{', '.join(str(c) for c in candidates) or 'a .json beside a .safetensors'})")


def run_of_checkpoint(source: str | Path, tag: str = "best") -> Path:
    """The run folder a checkpoint belongs to (its checkpoints/ folder's parent)."""
    folder = resolve_checkpoint(source, tag).parent
    return folder.parent if folder.name == CHECKPOINTS else folder


def checkpoints_of(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def run_config(run_dir: str | Path, hint: str = "") -> dict[str, Any]:
    """The run's config.yaml as saved (a dict); ``hint`` ends the error when there is none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no {CONFIG}){hint}")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def run_split(run_dir: str | Path, *names: str, hint: str = "", with_classes: bool = False
              ) -> tuple[str, Any]:
    """The first of the splits ``names`` (train, val, test) that the run's config sets: its name
    and its annotation spec (``data.<name>``), as training read it; ``with_classes``: a plain CSV
    path gets the run's ``data.classes`` (the label list it was written with). ``hint`` ends the
    errors. Its paths are found wherever the run is now (``mlic.data_paths``)."""
    config = run_config(run_dir, hint)
    data = config.get("data") or {}
    for name in names:
        held_out = Path(run_dir) / HELD_OUT_VAL
        if name == "val" and not data.get(name) and held_out.is_file():
            # Its image paths are absolute: the images stay where the training split has them.
            return name, {"path": str(held_out), "classes": str(Path(run_dir) / HELD_OUT_LABELS),
                          "allow_outside_root": True}
        if not data.get(name):
            continue
        data = locate_data(run_dir, config, (name, "classes") if with_classes else (name,), hint)
        spec = data.get(name)
        if spec and with_classes and data.get("classes") and isinstance(spec, str):
            spec = {"path": spec, "classes": data["classes"]}
        if spec:
            return name, spec
    raise ConfigError(f"{Path(run_dir) / CONFIG}: no {' or '.join(f'data.{n}' for n in names)} "
                      f"split{hint}")


def run_logger(run_dir: Path, quiet: bool = False) -> logging.Logger:
    logger = logging.getLogger(f"mlic.run.{run_dir.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        file_handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(file_handler)
        if not quiet:
            console = logging.StreamHandler(sys.stdout)
            console.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(console)
    return logger


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def append_metrics(run_dir: Path, row: Mapping[str, Any]) -> None:
    path = run_dir / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k)) for k in METRICS_COLUMNS})


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """On resume, drop rows of epochs after the checkpoint (written before a crash), and a last row
    cut short by a kill. Rewritten atomically: a second crash here loses nothing."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        width = len(reader.fieldnames or [])
        rows = [r for r in reader if None not in r.values() and len(r) == width
                and r["epoch"].isdigit() and int(r["epoch"]) <= last_epoch]

    def write(temp: str) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
