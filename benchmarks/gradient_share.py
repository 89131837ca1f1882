"""How the gradient divides between the backbone and the head at initialisation, per ablation row.

    python benchmarks/gradient_share.py

One batch of the emoji benchmark's training drawings (batch 64, 96 px, the rows and settings of
benchmarks/ablation.py), forward and backward through each row's freshly built model and loss; the
gradient norm of the backbone and of the head (``mlic.engine.clipping.gradient_parts``), and what
one global clip at ``train.grad_clip`` 10 leaves of each against clipping the two apart. This is why
``train.grad_clip_scope`` defaults to ``parts``. Writes benchmarks/results/gradient_share.md.
"""
from __future__ import annotations

import argparse
import logging
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from ablation import ROWS  # benchmarks/ is on the path when run as a script
from mlic.config import load_config
from mlic.data.emoji import build_emoji_benchmark
from mlic.demo import demo_config_path
from mlic.engine.assembly import build_trainee
from mlic.engine.clipping import gradient_parts

RESULTS = Path(__file__).parent / "results"
CLIP = 10.0


def part_norms(name: str, overrides: list[str], data: Path, size: int) -> tuple[float, float]:
    config = load_config(demo_config_path(), [
        f"data.train={data / 'style_fit.csv'}", f"data.classes={data / 'labels.txt'}",
        f"data.image_size={size}", "data.num_workers=0", "data.check_images=none", "data.val=null",
        "data.test=null", *overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        trainee = build_trainee(config, Path(run_dir), logging.getLogger("gradient_share"),
                                progress=False)
    torch.manual_seed(0)
    model = trainee.model.train()
    images, targets = next(iter(trainee.train_loader))[:2]
    trainee.loss_fn(model(images), targets.float()).backward()
    backbone, head = gradient_parts(model, "parts")
    return tuple(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in part if p.grad is not None))
                 for part in (backbone, head))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/emoji"))
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    build_emoji_benchmark(args.data)
    table = ["| row | loss | backbone norm | head norm | backbone's step, one global clip at 10 | "
             "backbone's step, clipped per part |", "|---|---|---|---|---|---|"]
    seen = set()
    for name, overrides in ROWS:
        if not overrides or "train.grad_clip=0" in overrides:  # the unclipped rows
            continue
        key = tuple(o for o in overrides if not o.startswith(("train.sam", "train.double_bias")))
        if key in seen:  # + SAM changes the step, not the model or the loss
            continue
        seen.add(key)
        loss = dict(o.split("=", 1) for o in overrides if o.startswith("loss.name")).get("loss.name", "asl")
        backbone, head = part_norms(name, overrides, args.data, args.size)
        total = math.hypot(backbone, head)
        table.append(f"| {name} | {loss} | {backbone:.3g} | {head:.3g} | "
                     f"{backbone * min(1.0, CLIP / total):.3g} | {min(backbone, CLIP):.3g} |")
        print(table[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gradient_share.md").write_text(
        "# The gradient's division between backbone and head at initialisation (emoji benchmark)\n\n"
        f"Command: `python benchmarks/gradient_share.py`; one batch of 64 training drawings at "
        f"{args.size} px, each row of benchmarks/ablation.py freshly built (EfficientNet-Lite0 from "
        "the offline ImageNet weights, the head initialised, the loss summed over batch and labels); "
        f"gradient L2 norms; the last two columns are the norm of the backbone's update direction "
        f"after clipping at {CLIP:g} (times the lr it is the step); torch {torch.__version__}, "
        f"{platform.machine()}; {time.strftime('%Y-%m-%d')}.\n\n" + "\n".join(table) + "\n",
        encoding="utf-8")


if __name__ == "__main__":
    main()
