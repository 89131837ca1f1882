"""Training behaviour: exact resume, configs, no-bias-decay groups, model/EMA selection."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import mlic
from mlic.cli import main
from mlic.config import merge, default_config, load_config
from mlic.data.formats import load_table
from mlic.engine import Trainer
from mlic.engine.optim import build_optimizer
from mlic.run_folder import read_metrics
from mlic.errors import ConfigError
from mlic.metrics import mean_average_precision
from mlic.models import create_model
from conftest import TINY_BACKBONE, tiny_config


def only_run(folder: Path) -> Path:
    runs = [p for p in folder.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def rows_without_time(run: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(run)]


def assert_same_tensors(a: Path, b: Path, atol: float = 1e-7) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.allclose(ta[key].float(), tb[key].float(), rtol=0, atol=atol), key


# ------------------------------------------------------------------------------ (a) resume

@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_matches_an_uninterrupted_run(colour_dataset, tmp_path, monkeypatch, ema) -> None:
    straight = mlic.train(tiny_config(colour_dataset, tmp_path / "straight", ema=ema),
                          progress=False, quiet=True)

    original = Trainer._save_last

    def save_then_interrupt(self, metrics):
        original(self, metrics)
        if self.epoch == 1:
            raise KeyboardInterrupt  # as a Ctrl-C right after epoch 1 was saved

    monkeypatch.setattr(Trainer, "_save_last", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        mlic.train(tiny_config(colour_dataset, tmp_path / "resumed", ema=ema), progress=False,
                   quiet=True)
    monkeypatch.undo()
    run = only_run(tmp_path / "resumed")
    assert [r["epoch"] for r in read_metrics(run)] == ["1"]
    assert not (run / "eval_test.json").exists()
    assert "--resume" in (run / "train.log").read_text()

    assert mlic.train(resume=run, progress=False, quiet=True) == run
    assert rows_without_time(run) == rows_without_time(straight)
    for name in ("best.safetensors", "last.safetensors"):
        assert_same_tensors(run / "checkpoints" / name, straight / "checkpoints" / name)
    state = [torch.load(r / "checkpoints" / "last.state.pt", weights_only=True) for r in (run, straight)]
    assert state[0]["epoch"] == state[1]["epoch"] == 2
    assert state[0]["global_step"] == state[1]["global_step"]
    if ema:
        for key, value in state[1]["ema"].items():
            assert torch.allclose(state[0]["ema"][key].float(), value.float(), rtol=0, atol=1e-7), key
    reports = [json.loads((r / "eval_test.json").read_text()) for r in (run, straight)]
    assert reports[0]["mAP"] == pytest.approx(reports[1]["mAP"], abs=1e-9)
    assert "resumed from" in (run / "train.log").read_text()


def test_resume_through_the_cli(colour_dataset, tmp_path, monkeypatch, capsys) -> None:
    original = Trainer._save_last

    def save_then_interrupt(self, metrics):
        original(self, metrics)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_last", save_then_interrupt)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(colour_dataset, tmp_path / "runs", epochs=2)))
    assert main(["train", "--config", str(config), "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.undo()
    run = only_run(tmp_path / "runs")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == ["1", "2"]
    assert (run / "eval_test.json").is_file()


# ------------------------------------------------------------------------------ (b) config

def test_dotted_overrides_into_free_mappings() -> None:
    config = load_config(None, ["data.train=/data/train.csv", "data.train.root=/data/images",
                                "data.val.format=coco", "data.val.path=/data/val.json",
                                "data.test.options.deep=1", "loss.params.gamma_neg=4",
                                "model.head_params={num_heads: 4}", "train.lr=0.01", "name=x"])
    assert config["data"]["train"] == {"path": "/data/train.csv", "root": "/data/images"}
    assert config["data"]["val"] == {"format": "coco", "path": "/data/val.json"}
    assert config["data"]["test"] == {"options": {"deep": 1}}
    assert config["loss"]["params"] == {"gamma_neg": 4}
    assert config["model"]["head_params"] == {"num_heads": 4}
    assert config["train"]["lr"] == 0.01 and config["name"] == "x"
    # Everything else keeps its default, and the defaults themselves are not changed.
    defaults = default_config()
    assert config["train"]["epochs"] == defaults["train"]["epochs"]
    assert defaults["data"]["train"] is None and defaults["loss"]["params"] == {}
    # Types of YAML scalars: ints, floats, booleans, null.
    config = load_config(None, ["train.epochs=3", "train.lr=1e-3", "train.amp=false",
                                "model.weights=", "train.lr=1"])
    assert config["train"]["epochs"] == 3 and config["train"]["amp"] is False
    assert config["model"]["weights"] is None and config["train"]["lr"] == 1


def test_load_config_from_yaml(tmp_path) -> None:
    path = tmp_path / "voc_run.yaml"
    path.write_text("data:\n  train: {format: voc, path: /VOC2007}\n  image_size: 64\n"
                    "model:\n  backbone: test_efficientnet\ntrain:\n  lr: 0.02\n  epochs: 4\n")
    config = load_config(path, ["train.epochs=5", "data.train.split=trainval"])
    assert config["name"] == "voc_run"  # the file's stem when the file sets no name
    assert config["data"]["train"] == {"format": "voc", "path": "/VOC2007", "split": "trainval"}
    assert config["data"]["image_size"] == 64 and config["model"]["backbone"] == TINY_BACKBONE
    assert config["train"]["lr"] == 0.02 and config["train"]["epochs"] == 5
    assert config["train"]["batch_size"] == default_config()["train"]["batch_size"]
    assert config["data"]["augment"] == default_config()["data"]["augment"]
    path.write_text("name: mine\n")
    assert load_config(path)["name"] == "mine"
    path.write_text("")  # an empty file is the defaults
    assert load_config(path)["train"] == default_config()["train"]


@pytest.mark.parametrize("override, suggestion", [
    ("train.lrr=0.1", "train.lr"), ("trian.lr=0.1", "train.lr"), ("model.backbon=x", "model.backbone"),
    ("data.augment.hflp=false", "data.augment.hflip"), ("epochs=3", "train.epochs"),
])
def test_unknown_key_suggestion(override, suggestion) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        load_config(None, [override])


def test_int_values_of_float_keys_are_range_checked() -> None:
    # Regression: an int given for a float key (lr=-1, threshold=2) used to skip every range check.
    for override in ("train.lr=-1", "train.lr=0", "eval.threshold=2", "train.ema=2",
                     "train.weight_decay=-1", "model.drop_rate=3", "train.momentum=-1"):
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
            load_config(None, [override])
    assert load_config(None, ["train.lr=1", "eval.threshold=0", "train.ema=1"])["train"]["lr"] == 1


def test_saved_config_reloads_and_reproduces(colour_dataset, tmp_path) -> None:
    cfg = tiny_config(colour_dataset, tmp_path / "first", epochs=1)
    run = mlic.train(cfg, progress=False, quiet=True)
    saved = load_config(run / "config.yaml")
    assert saved == load_config(None, base=saved)  # already complete and valid
    expected = default_config()
    merge(expected, cfg)
    assert saved == expected
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.yaml"), f"output_dir={again}",
                 "--no-progress"]) == 0
    rerun = only_run(again)
    assert rerun.name.startswith("tiny-")
    assert load_config(rerun / "config.yaml") == dict(saved, output_dir=str(again))
    assert rows_without_time(rerun) == rows_without_time(run)
    assert_same_tensors(rerun / "checkpoints" / "best.safetensors",
                        run / "checkpoints" / "best.safetensors", atol=0)


# ------------------------------------------------------------------------------ (c) optimizer

@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adam"])
def test_no_bias_decay_groups(optimizer) -> None:
    model = create_model(TINY_BACKBONE, 5)
    train = dict(default_config()["train"], optimizer=optimizer, weight_decay=0.05)
    opt = build_optimizer(model, train)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    norm_weights = {f"{name}.weight" for name, m in model.named_modules()
                    if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))}
    assert norm_weights  # the backbone has norm layers
    seen = 0
    for name, param in model.named_parameters():
        decay = group_of[id(param)]["weight_decay"]
        if name.endswith(".bias") or name in norm_weights:
            assert decay == 0.0, name
        else:
            assert param.ndim > 1 and decay == 0.05, name
        seen += 1
    assert seen == len(group_of) == sum(len(g["params"]) for g in opt.param_groups)
    assert model.head.state_dict() and any(group_of[id(p)]["weight_decay"] == 0.05
                                           for p in model.head.parameters())
    everything = build_optimizer(model, dict(train, no_bias_decay=False))
    assert len(everything.param_groups) == 1
    assert everything.param_groups[0]["weight_decay"] == 0.05


def test_no_decay_parameters_are_not_shrunk() -> None:
    """With zero gradients, AdamW's decay alone moves the decayed weights, never the others."""
    model = create_model(TINY_BACKBONE, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, dict(default_config()["train"], weight_decay=0.5, lr=0.1))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, param in model.named_parameters():
        moved = not torch.equal(param, before[name])
        if name.endswith(".bias") or param.ndim <= 1:
            assert not moved, name
        elif before[name].abs().sum() > 0:
            assert moved, name


# ------------------------------------------------------------------------------ (d) selection

def val_scores(run: Path, colour_dataset) -> float:
    predictor = mlic.Predictor.load(run)
    table = load_table(str(colour_dataset["test"])).with_labels(predictor.label_names)
    scores = predictor.scores([table.image_path(i) for i in range(len(table))])
    return mean_average_precision(scores, table.targets).map


def test_model_or_ema_selection(colour_dataset, tmp_path) -> None:
    run = mlic.train(tiny_config(colour_dataset, tmp_path, epochs=2, ema=0.5), progress=False,
                     quiet=True)
    rows = read_metrics(run)
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["selected"] in ("model", "ema")
    # The best epoch is the last one whose better candidate (rounded to 4 places) reached the best.
    running, expected_epoch = -np.inf, None
    for row in rows:
        value = round(max(float(row["val_mAP"]), float(row["val_mAP_ema"])), 4)
        if value >= running:
            running, expected_epoch = value, int(row["epoch"])
            assert row["selected"] == ("ema" if float(row["val_mAP_ema"]) > float(row["val_mAP"])
                                       else "model")
        else:
            assert row["selected"] == ""
        assert float(row["best_mAP"]) == pytest.approx(running, abs=1e-9)
    assert best["epoch"] == expected_epoch
    row = rows[expected_epoch - 1]
    assert row["selected"] == best["selected"]
    assert best["val_mAP"] == pytest.approx(float(row[{"model": "val_mAP", "ema": "val_mAP_ema"}[
        best["selected"]]]), rel=1e-5)
    assert best["val_mAP"] == pytest.approx(max(float(row["val_mAP"]), float(row["val_mAP_ema"])),
                                            rel=1e-5)
    # The saved weights really score that on the validation split.
    assert val_scores(run, colour_dataset) == pytest.approx(best["val_mAP"], abs=1e-6)
    assert json.loads((run / "eval_val.json").read_text())["mAP"] == pytest.approx(best["val_mAP"],
                                                                                 abs=1e-9)


def test_selection_logic_with_scripted_scores(colour_dataset, tmp_path, monkeypatch) -> None:
    """Epoch 1: EMA wins; epoch 2: worse than epoch 1, nothing saved; epoch 3: the model wins."""
    script = {(1, "model"): 0.6, (1, "ema"): 0.7, (2, "model"): 0.65, (2, "ema"): 0.69,
              (3, "model"): 0.8, (3, "ema"): 0.5}
    weights: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    original = Trainer.evaluate

    def scripted(self, model, loader, desc):
        report = original(self, model, loader, desc)
        name = desc.split()[-1]
        if name in ("model", "ema"):
            weights[(self.epoch, name)] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            report["mAP"] = script[(self.epoch, name)]
        return report

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    run = mlic.train(tiny_config(colour_dataset, tmp_path, epochs=3, ema=0.5), progress=False,
                     quiet=True)
    rows = read_metrics(run)
    assert [r["selected"] for r in rows] == ["ema", "", "model"]
    assert [float(r["best_mAP"]) for r in rows] == [0.7, 0.7, 0.8]
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert (best["epoch"], best["selected"], best["val_mAP"]) == (3, "model", 0.8)
    saved = load_file(str(run / "checkpoints" / "best.safetensors"))
    for key, value in weights[(3, "model")].items():
        assert torch.equal(saved[key], value), key
    assert_same_tensors(run / "checkpoints" / "best.safetensors",
                        run / "checkpoints" / "last.safetensors", atol=0)

    # Stop after epoch 2: best is still epoch 1's EMA.
    script.update({(3, "model"): 0.1, (3, "ema"): 0.1})
    weights.clear()
    run = mlic.train(tiny_config(colour_dataset, tmp_path / "b", epochs=3, ema=0.5), progress=False,
                     quiet=True)
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert (best["epoch"], best["selected"], best["val_mAP"]) == (1, "ema", 0.7)
    saved = load_file(str(run / "checkpoints" / "best.safetensors"))
    for key, value in weights[(1, "ema")].items():
        assert torch.equal(saved[key], value), key
    assert not all(torch.equal(saved[k], v) for k, v in weights[(1, "model")].items())


def test_without_validation_the_latest_weights_are_best(colour_dataset, tmp_path) -> None:
    cfg = tiny_config(colour_dataset, tmp_path, epochs=1, ema=0.5)
    cfg["data"]["val"], cfg["data"]["val_fraction"] = None, 0.0
    run = mlic.train(cfg, progress=False, quiet=True)
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["selected"] == "ema" and "val_mAP" not in best
    state = torch.load(run / "checkpoints" / "last.state.pt", weights_only=True)
    saved = load_file(str(run / "checkpoints" / "best.safetensors"))
    for key, value in state["ema"].items():
        assert torch.equal(saved[key], value), key
    assert read_metrics(run)[0]["val_mAP"] == "" and (run / "eval_test.json").is_file()


def test_a_run_starts_from_another_runs_checkpoint(colour_dataset, tmp_path) -> None:
    """model.weights=<run>/checkpoints/best.safetensors: the paper's pre-train-then-fine-tune."""
    first = mlic.train(tiny_config(colour_dataset, tmp_path / "first", epochs=1), progress=False,
                       quiet=True)
    best = first / "checkpoints" / "best.safetensors"
    cfg = default_config()
    merge(cfg, tiny_config(colour_dataset, tmp_path / "second"))
    cfg["model"].update(head="ml_decoder", weights=str(best),
                        head_params={"embed_dim": 16, "num_heads": 2, "ff_dim": 16})
    run = tmp_path / "second" / "run"
    (run / "checkpoints").mkdir(parents=True)
    trainer = Trainer(cfg, run, progress=False, quiet=True)
    saved = load_file(str(best))
    for key, value in trainer.model.backbone.state_dict().items():
        assert torch.equal(value, saved[f"backbone.{key}"]), key
    log = (run / "train.log").read_text()
    assert f"model.weights {best}: backbone " in log
    assert "unused (e.g. ['head.fc.bias', 'head.fc.weight'])" in log  # the linear head's


@pytest.mark.parametrize("sam", [False, True])
def test_head_warmup_trains_the_head_alone_first(colour_dataset, tmp_path, sam) -> None:
    """train.head_warmup_epochs: the backbone's weights (and batch-norm-free parameters) do not
    move while the head learns; afterwards both do. SGD with weight decay and momentum: a frozen
    weight must not even decay."""
    cfg = default_config()
    merge(cfg, tiny_config(colour_dataset, tmp_path, epochs=2, optimizer="sgd", momentum=0.9,
                           weight_decay=0.1, sam=sam, head_warmup_epochs=1))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    trainer = Trainer(cfg, run, progress=False, quiet=True)
    params = lambda part: {k: v.detach().clone() for k, v in part.named_parameters()}  # noqa: E731
    backbone, head = params(trainer.model.backbone), params(trainer.model.head)
    trainer.train_one_epoch()
    assert all(torch.equal(v, backbone[k]) for k, v in trainer.model.backbone.named_parameters())
    assert not all(torch.equal(v, head[k]) for k, v in trainer.model.head.named_parameters())
    trainer.epoch += 1
    trainer.train_one_epoch()
    assert not any(torch.equal(v, backbone[k]) for k, v in
                   trainer.model.backbone.named_parameters() if v.dim() > 1)
    log = (run / "train.log").read_text()
    steps = len(trainer.train_loader)
    assert f"step 1: head warm-up, the backbone frozen for {steps} steps" in log
    assert f"step {steps + 1}: head warm-up over: the whole model trains" in log
