"""Every shipped recipe parses, names its choices, and builds and takes a training step on a tiny
stand-in.

The recipes point at datasets and hub weights that are not here: the test keeps everything of a
recipe but the data (a tiny CSV set), the backbone (a tiny timm model, no weights) and the size.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from mlic.config import load_config
from mlic.run_folder import new_run_dir
from mlic.engine.trainer import Trainer
from tests.conftest import TINY_BACKBONE

RECIPES = sorted(str(p) for p in (Path(__file__).parent.parent / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: Path(p).stem)
def test_recipe_builds_and_steps(recipe, colour_dataset, tmp_path):
    config = load_config(recipe, [
        f"data.train={colour_dataset['train']}", f"data.val={colour_dataset['test']}",
        "data.test=null", "data.classes=null",
        "data.image_size=32", "data.num_workers=0", f"model.backbone={TINY_BACKBONE}",
        "model.pretrained=false", "train.batch_size=8", f"output_dir={tmp_path}",
        "device=cpu"])
    if config["model"]["head"] in ("ml_decoder", "query2label"):
        config["model"]["head_params"].update({"ff_dim": 64})
    trainer = Trainer(config, new_run_dir(tmp_path, "recipe"), progress=False, quiet=True)
    images, targets = next(iter(trainer.train_loader))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss, stepped = trainer.step(images, targets)
    assert math.isfinite(loss) and loss > 0  # a finite loss that a step can still lower
    assert stepped and any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


# What a recipe means must not move when the defaults (the paper's recipe) change.
EXPLICIT = ["model.head", "loss.name", "loss.params", "train.optimizer", "train.lr", "train.sam",
            "train.double_bias_lr", "train.ema", "train.grad_clip"]


def is_set(raw: dict, key: str) -> bool:
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: Path(p).stem)
def test_recipe_names_its_head_loss_and_optimizer(recipe):
    with open(recipe, encoding="utf-8") as f:
        raw = yaml.safe_load(f)  # the file itself, not merged with the defaults
    unset = [key for key in EXPLICIT if not is_set(raw, key)]
    if raw["train"].get("grad_clip", 0) > 0 and not is_set(raw, "train.grad_clip_scope"):
        unset.append("train.grad_clip_scope")  # how it clips is part of what it means
    assert not unset, f"{Path(recipe).name} leaves {', '.join(unset)} to the defaults"


def test_ctran_recipe_is_ctrans_own(colour_dataset, tmp_path):
    """Linear read-out, BCE summed over the unrevealed labels, Adam without SAM or EMA: the
    angular-loss defaults (cosine form, AAM, SAM) do not reach it."""
    recipe = next(r for r in RECIPES if Path(r).stem == "coco_resnet101_ctran")
    config = load_config(recipe, [
        f"data.train={colour_dataset['train']}", f"data.val={colour_dataset['test']}",
        "data.test=null", "data.classes=null",
        "data.image_size=32", "data.num_workers=0", f"model.backbone={TINY_BACKBONE}",
        "model.pretrained=false", f"output_dir={tmp_path}", "device=cpu"])
    trainer = Trainer(config, new_run_dir(tmp_path, "ctran"), progress=False, quiet=True)
    head = trainer.model.head
    assert type(head).__name__ == "CTranHead" and not head.cosine and head.class_bias is not None
    assert len(head.encoder) == 3 and head.encoder[0].self_attn.num_heads == 4
    assert head.hidden_dim == trainer.model.backbone.num_features  # no projection, as the reference
    assert trainer.label_mask == 0.75 and trainer.ema is None
    assert type(trainer.step).__name__ == "OptimizerStep"
    assert isinstance(trainer.optimizer, torch.optim.Adam) and not isinstance(
        trainer.optimizer, torch.optim.AdamW)
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {1e-5}
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.0}
    assert trainer.loss_fn.reduction == "sum"


def test_ctran_with_the_default_angular_loss_is_refused_with_its_recipe_named():
    """The defaults' AAM + SAM(SGD) is not C-Tran's recipe: one clear message, not a silent run."""
    from mlic.config import load_config
    from mlic.errors import ConfigError
    with pytest.raises(ConfigError, match="coco_resnet101_ctran.yaml"):
        load_config(None, ["model.head=ctran"])
    config = load_config(None, ["model.head=ctran", "model.head_params.cosine=true"])
    assert config["loss"]["name"] == "aam"  # asked for on purpose: allowed
    assert load_config(None, ["model.head=ctran", "loss.name=bce"])["model"]["head"] == "ctran"
