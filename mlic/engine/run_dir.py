"""The run folder: where a training run keeps its config, log, metrics and checkpoints.

    runs/<name>/
      config.yaml          the resolved config: `mlic train --config runs/<name>/config.yaml` repeats it
      train.log            what was printed
      metrics.csv          one row per epoch
      checkpoints/         last.* (resume), best.* (the selected weights)
      eval_<split>.json    metrics of the selected weights (written by training and by `mlic eval`)
      report.html, plots/  the run on one page, and its figures (mlic/report.py)
"""
from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from mlic.atomic import atomic_write

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
    (path / "checkpoints").mkdir(parents=True)
    return path


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
