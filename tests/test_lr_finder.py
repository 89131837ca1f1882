"""Initial lr estimation (range test, short trials), train.lr=auto, mlic lr-find and mlic tune."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

import mlic
from mlic.cli import main
from mlic.config import load_config, save_config, with_defaults
from mlic.engine import Trainer
from mlic.engine.assembly import Trainee, build_trainee
from mlic.engine.lr_finder import lr_range_test, lr_short_trials, plot_lr_curve
from mlic.errors import ConfigError
from mlic.run_folder import close_logger, read_metrics, run_logger
from conftest import TINY_BACKBONE, tiny_config

FAST_FINDER = {"steps": 12, "n_trials": 2, "epochs_per_trial": 1, "min_lr": 1e-5, "max_lr": 1.0}


def make_config(dataset, tmp_path: Path, name: str = "run", **train) -> tuple[dict, Path]:
    raw = tiny_config(dataset, tmp_path / "runs", **train)
    raw["lr_finder"] = dict(FAST_FINDER)
    run_dir = tmp_path / name
    (run_dir / "checkpoints").mkdir(parents=True)
    return load_config(None, base=with_defaults(raw)), run_dir


def make_trainee(dataset, tmp_path: Path, **train) -> Trainee:
    cfg, run_dir = make_config(dataset, tmp_path, **train)
    log = run_logger(run_dir, quiet=True)
    try:
        return build_trainee(cfg, run_dir, log, progress=False)
    finally:
        close_logger(log)


def everything(trainee: Trainee) -> dict:
    """A copy of all the state a search must leave as it was."""
    np_state = np.random.get_state()
    return {"model": {k: v.clone() for k, v in trainee.model.state_dict().items()},
            "modes": [m.training for m in trainee.model.modules()],
            "loss": {k: v.clone() for k, v in trainee.loss_fn.state_dict().items()},
            "torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (np_state[0], np_state[1].copy(), *np_state[2:]),
            "train_gen": trainee.train_loader.generator.get_state(),
            "val_gen": trainee.val_loader.generator.get_state()}


def assert_identical(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def take_a_step(trainee: Trainee) -> None:
    """Move the weights off their initial values, as after some training."""
    images, targets = next(iter(trainee.train_loader))
    trainee.plain_step(trainee.new_optimizer(0.01))(images, targets)


def test_range_test_leaves_everything_as_it_was(colour_dataset, tmp_path, monkeypatch) -> None:
    # SAM and doubled bias lr: the finder must bypass the one and keep the other's group ratio.
    trainee = make_trainee(colour_dataset, tmp_path, sam=True, double_bias_lr=True)
    take_a_step(trainee)
    trainee.model.eval()
    trainee.model.head.train()  # a mixed mode, restored as it is
    before = everything(trainee)
    seen = []
    new_optimizer = trainee.new_optimizer

    def spied_optimizer(lr):
        optimizer = new_optimizer(lr)
        original = optimizer.step

        def spy(*args, **kwargs):
            seen.append({g["name"]: g["lr"] for g in optimizer.param_groups})
            return original(*args, **kwargs)
        optimizer.step = spy
        return optimizer

    monkeypatch.setattr(trainee, "new_optimizer", spied_optimizer)
    result = lr_range_test(trainee, min_lr=1e-5, max_lr=1.0, steps=12)
    assert len(seen) == len(result.lrs)  # one plain step per point (SAM would be two passes)
    assert all(s["bias"] == pytest.approx(2 * s["decay"]) for s in seen)
    assert [s["decay"] for s in seen] == pytest.approx(result.lrs)
    assert np.all(np.diff(result.lrs) > 0) and result.lrs[0] == pytest.approx(1e-5)
    assert len(result.losses) == len(result.smoothed) == len(result.lrs) >= 3
    assert np.isfinite(result.suggestion) and 1e-5 <= result.suggestion <= 1.0
    assert 1e-5 <= result.min_loss_lr <= 1.0
    assert_identical(everything(trainee), before)

    path = plot_lr_curve(result, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_state_is_restored_when_the_search_fails(colour_dataset, tmp_path, monkeypatch) -> None:
    trainee = make_trainee(colour_dataset, tmp_path)
    take_a_step(trainee)
    before = everything(trainee)
    calls = []

    def failing_loss(*args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return original(*args)

    original = trainee.loss_fn.forward
    monkeypatch.setattr(trainee.loss_fn, "forward", failing_loss)
    with pytest.raises(RuntimeError, match="boom"):
        lr_range_test(trainee, steps=10)
    assert_identical(everything(trainee), before)


def test_short_trials_restore_and_need_a_validation_split(colour_dataset, tmp_path) -> None:
    trainee = make_trainee(colour_dataset, tmp_path, ema=0.9)
    take_a_step(trainee)
    before = everything(trainee)
    best, study = lr_short_trials(trainee, n_trials=2, epochs_per_trial=1, min_lr=1e-4, max_lr=0.1)
    assert len(study.trials) == 2 and 1e-4 <= best <= 0.1
    assert all(t.value is not None and 0 <= t.value <= 1 for t in study.trials)
    assert best in [t.user_attrs["lr"] for t in study.trials]
    assert_identical(everything(trainee), before)

    # Any evaluation callable scores the trials: here one that scores the second trial higher.
    scores = iter([0.2, 0.9])
    best, study = lr_short_trials(trainee, n_trials=2, epochs_per_trial=1, min_lr=1e-4, max_lr=0.1,
                                  evaluate=lambda model: next(scores))
    assert best == study.trials[1].user_attrs["lr"]

    trainee.val_loader = None
    with pytest.raises(ConfigError, match="data.val"):
        lr_short_trials(trainee, n_trials=1)


def test_lr_auto_is_resolved_and_the_run_is_the_explicit_one(colour_dataset, tmp_path) -> None:
    raw = tiny_config(colour_dataset, tmp_path / "auto", lr="auto", double_bias_lr=True)
    raw["lr_finder"] = dict(FAST_FINDER)
    run = mlic.train(raw, progress=False, quiet=True)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    found = json.loads((run / "lr_finder.json").read_text())
    assert isinstance(saved["train"]["lr"], float) and saved["train"]["lr"] == found["lr"]
    assert found["method"] == "range" and len(found["lrs"]) == len(found["smoothed"]) > 0
    assert (run / "lr_finder.png").is_file()
    assert "train.lr=auto" in (run / "train.log").read_text()
    # The same config with the found lr written in gives the very same run: the search left
    # weights, optimizer, schedule and random states exactly as they were.
    explicit = mlic.train(run / "config.yaml", [f"output_dir={tmp_path / 'explicit'}"],
                          progress=False, quiet=True)
    rows = [[{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(p)]
            for p in (run, explicit)]
    assert rows[0] == rows[1]


def test_lr_auto_sets_every_group_and_the_schedule(colour_dataset, tmp_path) -> None:
    cfg, run_dir = make_config(colour_dataset, tmp_path, lr="auto", double_bias_lr=True)
    save_config(cfg, run_dir / "config.yaml")
    trainer = Trainer(cfg, run_dir, progress=False, quiet=True)  # the search runs here
    lr = trainer.config["train"]["lr"]
    assert isinstance(lr, float) and lr == json.loads((run_dir / "lr_finder.json").read_text())["lr"]
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    div = trainer.config["train"]["div_factor"]
    assert groups["bias"]["max_lr"] == pytest.approx(2 * lr)  # OneCycle peaks at the found lr
    assert groups["decay"]["max_lr"] == pytest.approx(lr)
    assert groups["decay"]["lr"] == pytest.approx(lr / div)  # OneCycle's start
    assert trainer.scheduler.optimizer is trainer.optimizer
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == lr


def test_local_weights_are_the_starting_point_after_the_search(colour_dataset, tmp_path) -> None:
    body = timm.create_model(TINY_BACKBONE, num_classes=0, global_pool="")
    torch.manual_seed(123)
    with torch.no_grad():
        for p in body.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # not what a fresh model would be
    weights = {k: v.contiguous() for k, v in body.state_dict().items()}
    save_file(weights, str(tmp_path / "backbone.safetensors"))
    for method in ("range", "trials"):
        raw = tiny_config(colour_dataset, tmp_path / "runs", lr="auto")
        raw["model"]["weights"] = str(tmp_path / "backbone.safetensors")
        raw["lr_finder"] = {**FAST_FINDER, "method": method}
        cfg = load_config(None, base=with_defaults(raw))
        (tmp_path / method / "checkpoints").mkdir(parents=True)
        trainer = Trainer(cfg, tmp_path / method, progress=False, quiet=True)  # searches first
        assert (tmp_path / method / "lr_finder.json").is_file()
        state = trainer.model.backbone.body.state_dict()
        for key, value in weights.items():
            assert torch.equal(state[key], value), (method, key)


def test_config_accepts_auto_only(tmp_path) -> None:
    assert load_config(None, ["train.lr=auto"])["train"]["lr"] == "auto"
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="lr_finder.method"):
        load_config(None, ["lr_finder.method=grid"])


def test_on_epoch_end_can_stop_training(colour_dataset, tmp_path) -> None:
    seen = []
    run = mlic.train(tiny_config(colour_dataset, tmp_path, epochs=3), progress=False, quiet=True,
                     on_epoch_end=lambda epoch, row: seen.append((epoch, row["val_mAP"])) or True)
    assert len(seen) == 1 and seen[0][0] == 1 and 0 <= seen[0][1] <= 1
    assert [r["epoch"] for r in read_metrics(run)] == ["1"]
    assert (run / "eval_test.json").is_file()


def write_config(dataset, tmp_path: Path, **extra) -> Path:
    raw = tiny_config(dataset, tmp_path / "runs")
    raw["lr_finder"] = dict(FAST_FINDER)
    for key, value in extra.items():
        raw.setdefault(key, {}).update(value)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("method", ["range", "trials"])
def test_cli_lr_find(colour_dataset, tmp_path, capsys, method) -> None:
    config = write_config(colour_dataset, tmp_path)
    out = tmp_path / "find"
    assert main(["lr-find", "--config", str(config), "--method", method, "--out", str(out),
                 "--no-progress", "lr_finder.steps=10"]) == 0
    printed = capsys.readouterr().out
    found = json.loads((out / "lr_find.json").read_text())
    assert found["method"] == method and 1e-5 <= found["lr"] <= 1.0
    assert f"{found['lr']:.3g}" in printed
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.rglob("*.safetensors"))  # a dry run: nothing trained is kept
    assert main(["lr-find", "--config", str(config), "--out", str(out), "--no-progress",
                 "lr_finder.min_lr=1", "lr_finder.max_lr=0.1"]) == 2  # min >= max: a clean error


def test_cli_tune_and_resume(colour_dataset, tmp_path, capsys) -> None:
    # AAM on a cosine head: the loss scale s is searched too; the linear head takes pooling.
    config = write_config(colour_dataset, tmp_path, loss={"name": "aam"},
                          model={"head_params": {"cosine": True}})
    out = tmp_path / "tune"
    args = ["tune", "--config", str(config), "--out", str(out), "--no-progress", "train.epochs=1"]
    assert main(args + ["--trials", "2"]) == 0
    assert "best: trial" in capsys.readouterr().out
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["number"] for r in rows] == ["0", "1"]
    assert all(r["state"] == "complete" and r["lr"] and r["scale"] and r["cutout"] and r["pooling"]
               for r in rows)
    assert all(Path(r["run_dir"]).parent == out / "trials" for r in rows)
    best_row = max(rows, key=lambda r: float(r["value"]))
    best = load_config(out / "best_config.yaml")  # a complete, valid config
    assert best["train"]["lr"] == float(best_row["lr"])
    assert best["loss"]["params"]["scale"] == int(best_row["scale"])
    assert best["model"]["head_params"]["pooling"] == best_row["pooling"]
    assert best["data"]["augment"]["cutout"] == float(best_row["cutout"])
    assert best["train"]["epochs"] == 1

    assert main(args + ["--trials", "2"]) == 2  # the study exists: --resume or another folder
    assert main(["tune", "--out", str(out), "--resume", "--trials", "1", "--no-progress"]) == 0
    with open(out / "trials.csv", newline="") as f:
        assert [r["number"] for r in csv.DictReader(f)] == ["0", "1", "2"]
    import optuna
    study = optuna.load_study(study_name="mlic-tune", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3
    assert main(["tune", "--config", str(config), "--out", str(tmp_path / "x")]) == 2  # no --trials
