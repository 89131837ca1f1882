"""What a run logs as it trains: every step's loss in ``<run>/steps.csv``, and on request the run's
numbers in TensorBoard or MLflow (``train.loggers: [tensorboard, mlflow]``; off by default).

* ``steps.csv``: step, epoch, loss, lr of every optimizer step (metrics.csv has one row per epoch).
  On resume the rows after the checkpoint's step are dropped, as metrics.csv drops its epochs.
* TensorBoard (``pip install mlic[tracking]``): the loss and lr per step, metrics.csv's numbers per
  epoch, and a few training images with their labels, under ``<run>/tensorboard``.
* MLflow: the config as parameters, metrics.csv's numbers per epoch, and at the end the report,
  the metrics and the selected model (``checkpoints/best.*``) as artifacts. The store is
  ``MLFLOW_TRACKING_URI`` when set, else a local file store beside the runs
  (``<output_dir>/mlruns``: ``mlflow ui --backend-store-uri <output_dir>/mlruns``), with the
  experiment named after the run's ``name``. A resumed run continues its MLflow run (its id is
  kept in ``<run>/mlflow_run_id``).

Only rank 0 of a distributed run logs (the trainer builds ``Tracking.off()`` elsewhere). A tracker
can never fail a run: a missing package or any error of a logger is one warning line in
train.log, and that logger is switched off while training goes on.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mlic.atomic import atomic_write
from mlic.run_folder import checkpoints_of

LOGGERS = ("tensorboard", "mlflow")
STEPS = "steps.csv"
STEP_COLUMNS = ["step", "epoch", "loss", "lr"]
SHOWN_IMAGES = 8  # training images sent to TensorBoard


class StepLog:
    """``<run>/steps.csv``, appended as training steps; flushed each epoch (a crash loses at most
    the steps since, which the resume repeats)."""

    def __init__(self, run_dir: Path, after_step: int = 0):
        self.path = run_dir / STEPS
        truncate_steps(self.path, after_step)
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(STEP_COLUMNS)

    def write(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self.writer.writerow([step, epoch, f"{loss:.6g}" if math.isfinite(loss) else "", f"{lr:.6g}"])

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def truncate_steps(path: Path, last_step: int) -> None:
    """Keep the rows up to ``last_step`` (and none cut short by a kill); atomically rewritten."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f)][1:]
    keep = [r for r in rows if len(r) == len(STEP_COLUMNS) and r[0].isdigit()
            and int(r[0]) <= last_step]
    if len(keep) == len(rows):
        return

    def write(temp: str) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(STEP_COLUMNS)
            writer.writerows(keep)
    atomic_write(path, write)


def read_steps(run_dir: Path) -> list[dict[str, str]]:
    path = Path(run_dir) / STEPS
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class Tracking:
    """The step log and the chosen loggers, behind calls that never raise."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], log: logging.Logger,
                 after_step: int = 0):
        self.run_dir, self.log = run_dir, log
        ok, steps = self._guard("steps.csv", StepLog, run_dir, after_step)
        self.steps: StepLog | None = steps if ok else None
        self.loggers: dict[str, Any] = {}
        for name in config["train"].get("loggers") or []:
            ok, opened = self._guard(name, OPENERS[name], run_dir, config)
            if ok:
                self.loggers[name] = opened

    @classmethod
    def off(cls) -> "Tracking":
        """Logs nothing (ranks other than 0)."""
        tracking = cls.__new__(cls)
        tracking.run_dir, tracking.log, tracking.steps, tracking.loggers = None, None, None, {}
        return tracking

    def start(self, paths: Sequence[str], labels: Sequence[Sequence[str]]) -> None:
        """A few training images with their labels (TensorBoard)."""
        self._each("images", paths[:SHOWN_IMAGES], labels[:SHOWN_IMAGES])

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        if self.steps is not None and not self._guard("steps.csv", self.steps.write, step, epoch,
                                                      loss, lr)[0]:
            self.steps = None
        self._each("step", step, loss, lr)

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        if self.steps is not None and not self._guard("steps.csv", self.steps.flush)[0]:
            self.steps = None
        numbers = {k: float(v) for k, v in row.items() if k != "epoch" and _number(v)}
        self._each("epoch", epoch, numbers)

    def finish(self) -> None:
        """At the end of training: artifacts (MLflow), then everything closed."""
        self._each("finish", self.run_dir)
        self.close()

    def close(self) -> None:
        if self.steps is not None:
            self._guard("steps.csv", self.steps.close)
            self.steps = None
        self._each("close")
        self.loggers = {}

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.loggers.items()):
            if not self._guard(name, getattr(logger, method), *args)[0]:
                self.loggers.pop(name, None)

    def _guard(self, name: str, call: Callable, *args: Any) -> tuple[bool, Any]:
        """(True, ``call(*args)``), or on any error one warning and (False, None)."""
        try:
            return True, call(*args)
        except Exception as error:  # noqa: BLE001 - tracking must never fail a run
            message = (str(error).splitlines() or [""])[0][:300]
            self.log.warning(f"warning: {name} logging switched off: {type(error).__name__}: "
                             f"{message}")
            return False, None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardLogger:
    def __init__(self, run_dir: Path, config: Mapping[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError("the tensorboard package is not installed "
                               "(pip install 'mlic[tracking]')") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def step(self, step: int, loss: float, lr: float) -> None:
        if math.isfinite(loss):
            self.writer.add_scalar("step/loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, epoch: int, numbers: Mapping[str, float]) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def images(self, paths: Sequence[str], labels: Sequence[Sequence[str]]) -> None:
        import numpy as np
        from mlic.data.images import load_rgb
        from mlic.errors import DataError
        for i, (path, names) in enumerate(zip(paths, labels)):
            try:
                picture = load_rgb(path)
            except DataError:  # an unreadable image is left out, not the logger
                continue
            picture.thumbnail((224, 224))
            self.writer.add_image(f"train/{i}", np.asarray(picture), 0, dataformats="HWC")
            # Markdown: the label names as inline code, so no name is read as markup
            self.writer.add_text(f"train/{i}", f"`{Path(path).name}`: " + ", ".join(
                "`" + str(n).replace("`", "'") + "`" for n in names))

    def finish(self, run_dir: Path) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    def __init__(self, run_dir: Path, config: Mapping[str, Any]):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise RuntimeError("the mlflow package is not installed "
                               "(pip install 'mlic[tracking]')") from None
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local file store beside the runs; MLflow 3 asks for this switch to use one
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir.parent / "mlruns").resolve().as_uri()
        self.client, self.metric = MlflowClient(tracking_uri=uri), Metric
        id_file = run_dir / "mlflow_run_id"
        if id_file.is_file():  # a resumed run continues its MLflow run
            self.run_id = id_file.read_text(encoding="utf-8").strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = str(config.get("name") or "mlic")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(name))
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        id_file.write_text(self.run_id + "\n", encoding="utf-8")
        params = [Param(k, str(v)[:500]) for k, v in _flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def step(self, step: int, loss: float, lr: float) -> None:
        pass  # per epoch only: per-step points are in steps.csv (and TensorBoard)

    def epoch(self, epoch: int, numbers: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(k, v, now, epoch)
                                                    for k, v in numbers.items()])

    def images(self, paths: Sequence[str], labels: Sequence[Sequence[str]]) -> None:
        pass

    def finish(self, run_dir: Path) -> None:
        for name in ("report.html", "metrics.csv", STEPS, "config.yaml"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        for path in sorted(run_dir.glob("eval_*.json")):
            self.client.log_artifact(self.run_id, str(path), "evaluations")
        for path in sorted(checkpoints_of(run_dir).glob("best.*")):
            self.client.log_artifact(self.run_id, str(path), "model")
        self.client.set_terminated(self.run_id)

    def close(self) -> None:
        pass


OPENERS = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
