"""The paper's training pieces wired into `mlic train`: SAM, doubled bias lr, accumulation, early stop."""
from __future__ import annotations

import csv

import pytest

import mlic
from mlic.engine.trainer import Trainer
from tests.conftest import tiny_config


def rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sam_recipe_trains(colour_dataset, tmp_path):
    config = tiny_config(colour_dataset, tmp_path, epochs=2, optimizer="sgd", lr=0.05, sam=True,
                         double_bias_lr=True, accumulate=2, ema=0.9, early_stopping=True)
    config["model"]["head_params"] = {"cosine": True}
    config["loss"] = {"name": "am", "params": {"scale": 10.0}}
    run = mlic.train(config, progress=False, quiet=True)
    metrics = rows(run)
    assert len(metrics) == 2 and all(r["es_wait"] != "" for r in metrics)
    assert float(metrics[-1]["train_loss"]) < float(metrics[0]["train_loss"])
    model, _ = mlic.engine.load_model(run)
    assert model.head.fc.scale == 10.0  # loss.params.scale set the cosine head's scale


def test_angular_loss_switches_the_head_to_cosine(colour_dataset, tmp_path):
    config = tiny_config(colour_dataset, tmp_path, epochs=1)
    config["loss"] = {"name": "aam", "params": {}}
    run = mlic.train(config, progress=False, quiet=True)
    model, meta = mlic.engine.load_model(run)
    assert meta["model"]["head_params"]["cosine"] is True and model.head.fc.scale == 23.0


def test_angular_loss_refuses_a_head_without_cosine_form(colour_dataset, tmp_path):
    config = tiny_config(colour_dataset, tmp_path, epochs=1)
    config["model"].update(head="ml_gcn", label_embeddings="onehot")
    config["loss"] = {"name": "aam", "params": {}}
    with pytest.raises(mlic.errors.ConfigError, match="cosine"):
        mlic.train(config, progress=False, quiet=True)


def test_early_stopping_stops_and_resume_keeps_it(colour_dataset, tmp_path, monkeypatch):
    # Scripted validation mAPs: warm-up (constant schedule) is over at once, patience 2.
    scripted = iter([0.50, 0.60, 0.55, 0.58, 0.90, 0.95])
    monkeypatch.setattr(Trainer, "evaluate",
                        lambda self, model, loader, desc: {"mAP": next(scripted)})
    monkeypatch.setattr(Trainer, "finish", lambda self: None)
    config = tiny_config(colour_dataset, tmp_path, epochs=6, scheduler="constant",
                         early_stopping=True, patience=2)
    run = mlic.train(config, progress=False, quiet=True)
    metrics = rows(run)
    # smooth: 0.40, then 0.56 (0.60 beats it), 0.55 does not (wait 1), 0.58 does (wait back to 0)
    assert [int(r["es_wait"]) for r in metrics][:4] == [0, 0, 1, 0]
    state = mlic.engine.checkpoint.load_training_state(run / "checkpoints")
    assert state["early_stopping"] is not None


def test_early_stop_triggers(colour_dataset, tmp_path, monkeypatch):
    scripted = iter([0.50, 0.60, 0.55, 0.54, 0.53, 0.52])
    monkeypatch.setattr(Trainer, "evaluate",
                        lambda self, model, loader, desc: {"mAP": next(scripted)})
    monkeypatch.setattr(Trainer, "finish", lambda self: None)
    config = tiny_config(colour_dataset, tmp_path, epochs=6, scheduler="constant",
                         early_stopping=True, patience=2)
    run = mlic.train(config, progress=False, quiet=True)
    assert len(rows(run)) == 4  # 0.55 and 0.54 do not beat the smoothed 0.56: stop after epoch 4
    epochs_before = len(rows(run))
    mlic.train(resume=run, progress=False, quiet=True)
    assert len(rows(run)) == epochs_before
