"""Every shipped recipe parses, and builds and takes a training step on a tiny stand-in.

The recipes point at datasets and hub weights that are not here: the test keeps everything of a
recipe but the data (a tiny CSV set), the backbone (a tiny timm model, no weights) and the size.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from mlic.config import load_config
from mlic.engine.run_dir import new_run_dir
from mlic.engine.trainer import Trainer
from tests.conftest import TINY_BACKBONE

RECIPES = sorted(str(p) for p in (Path(__file__).parent.parent / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: Path(p).stem)
def test_recipe_builds_and_steps(recipe, colour_dataset, tmp_path):
    config = load_config(recipe, [
        f"data.train={colour_dataset['train']}", f"data.val={colour_dataset['test']}",
        "data.image_size=32", "data.num_workers=0", f"model.backbone={TINY_BACKBONE}",
        "model.pretrained=false", "train.batch_size=8", f"output_dir={tmp_path}",
        "device=cpu"])
    if config["model"]["head"] in ("ml_decoder", "query2label"):
        config["model"]["head_params"].update({"ff_dim": 64})
    trainer = Trainer(config, new_run_dir(tmp_path, "recipe"), progress=False, quiet=True)
    images, targets = next(iter(trainer.train_loader))
    loss, _ = trainer.step(images, targets)
    assert loss == loss and loss >= 0  # finite, not NaN
