"""Every head trained on the emoji benchmark with only ``model.head`` changed.

    python benchmarks/heads_emoji.py [--epochs 6] [--heads linear ml_decoder ...] [--quick]

The recipe is the demo's (mlic/configs/demo_emoji.yaml: EfficientNet-Lite0 from the offline
ImageNet weights, 96 px, ASL, AdamW, OneCycle, EMA; held-out drawing style, 159 labels). Writes
benchmarks/results/heads_emoji.md with test mAP, thresholded metrics, time and cost per head.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mlic.config import load_config
from mlic.data.emoji import build_emoji_benchmark
from mlic.demo import demo_config_path
from mlic.engine import train
from mlic.engine.checkpoint import load_model
from mlic.flops import model_cost

HEADS = ["linear", "ml_decoder", "label_graph", "ml_gcn", "query2label"]
# Query2Label's reference widths (hidden = 1280 backbone channels, feed-forward 8192) cost 19 s per
# batch of 64 on 2 CPU cores, 20x the backbone; here it runs narrower, and the table says so.
HEAD_PARAMS = {"query2label": {"hidden_dim": 256, "ff_dim": 1024}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/emoji", help="emoji benchmark folder (built if absent)")
    parser.add_argument("--runs", default="runs/heads_emoji")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--heads", nargs="+", default=HEADS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 epoch on 64 px: a smoke run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "heads_emoji.md"))
    args = parser.parse_args()
    data = Path(args.data)
    build_emoji_benchmark(data)
    epochs, size = (1, 64) if args.quick else (args.epochs, None)
    rows = []
    for head in args.heads:
        overrides = [f"data.train={data / 'style_train.csv'}", f"data.test={data / 'style_test.csv'}",
                     f"data.classes={data / 'labels.txt'}", f"output_dir={args.runs}",
                     f"name=heads_{head}", f"model.head={head}", f"train.epochs={epochs}",
                     f"seed={args.seed}"]
        if size:
            overrides.append(f"data.image_size={size}")
        overrides += [f"model.head_params.{k}={v}" for k, v in HEAD_PARAMS.get(head, {}).items()]
        config = load_config(demo_config_path(), overrides)
        start = time.time()
        run = train(config, progress=False)
        minutes = (time.time() - start) / 60
        report = json.loads((run / "eval_test.json").read_text())
        model, _ = load_model(run)
        cost = model_cost(model, config["data"]["image_size"])
        variant = head + "".join(f" {k}={v}" for k, v in HEAD_PARAMS.get(head, {}).items())
        rows.append(f"| {variant} | {100 * report['mAP']:.2f} | {100 * report['CF1']:.2f} | "
                    f"{100 * report['OF1']:.2f} | {minutes:.1f} | {cost.gmacs_total:.3f} | "
                    f"{cost.params_total_m:.1f} | `{run}` |")
        print(rows[-1], flush=True)
    table = "\n".join(["| head | test mAP | CF1@0.5 | OF1@0.5 | train+eval min | GFLOPs | params (M) | run |",
                       "|---|---|---|---|---|---|---|---|", *rows])
    text = (f"# Heads on the emoji benchmark (held-out drawing style, 159 labels)\n\n"
            f"Command: `python benchmarks/heads_emoji.py --epochs {epochs}"
            f"{' --quick' if args.quick else ''}`; recipe `mlic/configs/demo_emoji.yaml` with only "
            f"`model.head` changed (head defaults), seed {args.seed}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {platform.machine()}.\n\n{table}\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
