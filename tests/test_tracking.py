"""What a run logs as it trains (mlic/tracking.py): steps.csv always, TensorBoard and MLflow when
``train.loggers`` asks (each test skips where its package is not installed), and a logger that
fails or is missing never fails the run."""
from __future__ import annotations

import csv
import importlib.util

import pytest

import mlic
import mlic.tracking
from mlic.config import load_config
from mlic.errors import ConfigError
from mlic.tracking import read_steps, truncate_steps
from tests.conftest import tiny_config

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed (mlic[tracking])")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="mlflow is not installed (mlic[tracking])")


def steps_per_epoch(run) -> int:
    rows = list(csv.DictReader(open(run / "metrics.csv", encoding="utf-8")))
    return int(rows[0]["steps"])


def test_every_step_goes_to_steps_csv(colour_dataset, tmp_path):
    run = mlic.train(tiny_config(colour_dataset, tmp_path, epochs=2), progress=False, quiet=True)
    rows = read_steps(run)
    per_epoch = steps_per_epoch(run)  # 48 images, batch 16: 3
    assert [int(r["step"]) for r in rows] == list(range(1, 2 * per_epoch + 1))
    assert [r["epoch"] for r in rows] == ["1"] * per_epoch + ["2"] * per_epoch
    assert all(float(r["loss"]) > 0 and float(r["lr"]) > 0 for r in rows)
    assert not (run / "tensorboard").exists() and not (run / "mlflow_run_id").exists()  # off


def test_resume_drops_the_steps_after_the_checkpoint(colour_dataset, tmp_path):
    class Crash(Exception):
        pass

    def crash_after_first_epoch(epoch, row):
        raise Crash  # epoch 1 is saved; steps of a second epoch never happen

    config = tiny_config(colour_dataset, tmp_path, epochs=2)
    with pytest.raises(Crash):
        mlic.train(config, progress=False, quiet=True, on_epoch_end=crash_after_first_epoch)
    (run,) = tmp_path.glob("tiny-*")
    per_epoch = steps_per_epoch(run)
    with open(run / "steps.csv", "a", encoding="utf-8") as f:  # a killed epoch 2's steps
        f.write(f"{per_epoch + 1},2,0.5,0.01\n{per_epoch + 2},2,0.4")
    mlic.train(resume=run, progress=False, quiet=True)
    steps = [int(r["step"]) for r in read_steps(run)]
    assert steps == list(range(1, 2 * per_epoch + 1))


def test_truncate_steps_keeps_complete_rows_up_to_the_step(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("step,epoch,loss,lr\n1,1,0.9,0.1\n2,1,0.8,0.1\n3,2,0.7,0.1\n4,2,0.6")
    truncate_steps(path, 3)
    assert path.read_text().splitlines() == ["step,epoch,loss,lr", "1,1,0.9,0.1", "2,1,0.8,0.1",
                                             "3,2,0.7,0.1"]


def test_loggers_key_is_checked():
    assert load_config(None, ["train.loggers=[mlflow, tensorboard]"])["train"]["loggers"] == [
        "mlflow", "tensorboard"]
    assert load_config(None, [])["train"]["loggers"] == []  # off by default
    with pytest.raises(ConfigError, match="'wandb' is not one"):
        load_config(None, ["train.loggers=[wandb]"])


@needs_tensorboard
def test_tensorboard_gets_steps_epochs_and_images(colour_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = mlic.train(tiny_config(colour_dataset, tmp_path, epochs=2, loggers=["tensorboard"]),
                     progress=False, quiet=True)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    per_epoch = steps_per_epoch(run)
    assert len(events.Scalars("step/loss")) == 2 * per_epoch
    assert [s.step for s in events.Scalars("epoch/val_mAP")] == [1, 2]
    assert {"epoch/train_loss", "epoch/lr", "step/lr"} <= set(tags["scalars"])
    assert len(tags["images"]) == 8
    assert "warning" not in (run / "train.log").read_text()


@needs_mlflow
def test_mlflow_local_store_gets_params_metrics_and_artifacts(colour_dataset, tmp_path,
                                                              monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = mlic.train(tiny_config(colour_dataset, tmp_path, epochs=2, loggers=["mlflow"]),
                     progress=False, quiet=True)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run_id = (run / "mlflow_run_id").read_text().strip()
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED" and found.info.run_name == run.name
    assert found.data.params["train.batch_size"] == "16"
    assert [m.step for m in client.get_metric_history(run_id, "val_mAP")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "metrics.csv", "steps.csv", "model", "evaluations"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "model")} >= {
        "model/best.json", "model/best.safetensors"}


@needs_mlflow
def test_a_resumed_run_continues_its_mlflow_run(colour_dataset, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    def crash_after_first_epoch(epoch, row):
        raise KeyboardInterrupt

    config = tiny_config(colour_dataset, tmp_path, epochs=2, loggers=["mlflow"])
    with pytest.raises(KeyboardInterrupt):
        mlic.train(config, progress=False, quiet=True, on_epoch_end=crash_after_first_epoch)
    (run,) = tmp_path.glob("tiny-*")
    run_id = (run / "mlflow_run_id").read_text().strip()
    mlic.train(resume=run, progress=False, quiet=True)
    assert (run / "mlflow_run_id").read_text().strip() == run_id
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1

def test_a_failing_or_missing_logger_never_fails_the_run(colour_dataset, tmp_path, monkeypatch):
    class Broken:
        def __init__(self, run_dir, config):
            pass

        def epoch(self, epoch, numbers):
            raise OSError("disk full")

        step = images = finish = close = lambda self, *args: None

    def missing(run_dir, config):
        raise RuntimeError("the mlflow package is not installed (pip install 'mlic[tracking]')")

    monkeypatch.setitem(mlic.tracking.OPENERS, "tensorboard", Broken)
    monkeypatch.setitem(mlic.tracking.OPENERS, "mlflow", missing)
    run = mlic.train(tiny_config(colour_dataset, tmp_path, epochs=2,
                                 loggers=["tensorboard", "mlflow"]), progress=False, quiet=True)
    log = (run / "train.log").read_text()
    assert "warning: tensorboard logging switched off: OSError: disk full" in log
    assert log.count("tensorboard logging switched off") == 1  # switched off, not retried
    assert "warning: mlflow logging switched off: RuntimeError: the mlflow package" in log
    assert (run / "report.html").is_file() and len(read_steps(run)) == 2 * steps_per_epoch(run)
