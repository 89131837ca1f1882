"""C-Tran against the best plain head on the emoji benchmark, with partly known labels.

    python benchmarks/ctran.py [--epochs 4] [--rows linear ctran ...] [--hide 0 0.5]

Every row is trained with the demo's CPU recipe (mlic/configs/demo_emoji.yaml: EfficientNet-Lite0
from the offline ImageNet weights, 96 px, ASL, AdamW, OneCycle, EMA; held-out drawing style,
159 labels) and the same epochs; only the head (and its options) changes. Each trained model is
evaluated with 0, 25, 50 and 75 % of each test image's labels known (``mlic eval --known-fraction``:
the same known set for every model, metrics over the unknown entries only). Heads that cannot
use known labels are scored on the same unknown entries, so the columns compare across rows.
Then the same with 50 % of the training labels hidden (``data.hide_fraction``).
Writes benchmarks/results/ctran.md (and .json), after every run.
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
from mlic.evaluation import evaluate

FRACTIONS = (0.0, 0.25, 0.5, 0.75)
ROWS = {
    # The best other head at this budget (benchmarks/results/heads_emoji.md).
    "linear": {"model.head": "linear"},
    # C-Tran at the reference's depth (3 layers, 4 heads, FFN = width) but 256 wide instead of the
    # backbone's 1280 channels: 159 label tokens x 1280 wide cost 70x the backbone at 96 px.
    "ctran": {"model.head": "ctran", "model.head_params.hidden_dim": 256},
    # Not C-Tran: the head, loss and optimizer of Prokofiev & Sovrasov's recipe (cosine ML-Decoder,
    # AAM, SAM around SGD) on the same budget. C-Tran's own recipe is
    # configs/paper/coco_resnet101_ctran.yaml.
    "mld_aam_sam": {"model.head": "ml_decoder", "loss.name": "aam", "loss.params": "{}",
                    "train.optimizer": "sgd", "train.lr": 0.007, "train.weight_decay": 5e-4,
                    "train.sam": True, "train.double_bias_lr": True},
}

ROW_NOTES = ("`linear`: the demo's linear head; `ctran`: C-Tran at hidden 256 with label-mask "
             "training, on the demo's recipe (ASL, AdamW), not C-Tran's own; `mld_aam_sam`: not "
             "C-Tran but a cosine ML-Decoder with AAM and SAM around SGD (the head, loss and "
             "optimizer of Prokofiev & Sovrasov's recipe).")


def run_row(name: str, hide: float, args) -> dict:
    data = Path(args.data)
    overrides = [f"data.train={data / 'style_train.csv'}", f"data.test={data / 'style_test.csv'}",
                 f"data.classes={data / 'labels.txt'}", f"output_dir={args.runs}",
                 f"name=ctran_{name}_hide{round(100 * hide)}", f"train.epochs={args.epochs}",
                 f"seed={args.seed}", f"data.hide_fraction={hide}"]
    overrides += [f"{k}={v}" for k, v in ROWS[name].items()]
    start = time.time()
    run = train(load_config(demo_config_path(), overrides), progress=False)
    minutes = (time.time() - start) / 60
    result = {"row": name, "hide": hide, "run": str(run), "train_minutes": round(minutes, 1)}
    for fraction in FRACTIONS:
        report = evaluate(run, known_fraction=fraction, progress=False, num_workers=0)
        result[f"known{round(100 * fraction)}"] = {k: report[k] for k in ("mAP", "CF1", "OF1")}
    print(json.dumps(result), flush=True)
    return result


def table(results: list[dict], hide: float) -> str:
    lines = ["| model | " + " | ".join(f"mAP, {round(100 * f)}% known" for f in FRACTIONS)
             + " | CF1 / OF1 @0.5, 0% known | train min | run |",
             "|---|" + "---|" * (len(FRACTIONS) + 3)]
    for r in (r for r in results if r["hide"] == hide):
        maps = " | ".join(f"{100 * r[f'known{round(100 * f)}']['mAP']:.2f}" for f in FRACTIONS)
        zero = r["known0"]
        lines.append(f"| {r['row']} | {maps} | {100 * zero['CF1']:.2f} / {100 * zero['OF1']:.2f} | "
                     f"{r['train_minutes']} | `{r['run']}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/emoji", help="emoji benchmark folder (built if absent)")
    parser.add_argument("--runs", default="runs/ctran")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rows", nargs="+", default=["linear", "ctran"], choices=list(ROWS))
    parser.add_argument("--hide", nargs="+", type=float, default=[0.0, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ctran.md"))
    parser.add_argument("--fresh", action="store_true",
                        help="start a new table instead of adding to the rows already in the .json")
    args = parser.parse_args()
    build_emoji_benchmark(Path(args.data))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = out.with_suffix(".json")
    # Rows take 5-30 CPU minutes each: keep the ones already measured and add to them.
    results = [] if args.fresh or not saved.exists() else json.loads(saved.read_text(encoding="utf-8"))
    for hide in args.hide:
        for name in args.rows:
            results = [r for r in results if (r["row"], r["hide"]) != (name, hide)]
            results.append(run_row(name, hide, args))
            hides = sorted({r["hide"] for r in results})
            sections = [f"## {round(100 * h)}% of the training labels hidden\n\n{table(results, h)}"
                        for h in hides]
            out.write_text(
                f"# C-Tran and partly known labels on the emoji benchmark\n\n"
                f"Command: `python benchmarks/ctran.py --epochs {args.epochs} --rows ROW.. --hide "
                f"FRACTION..` (rows added run by run; each row's run folder is in its last "
                f"column); recipe "
                f"`mlic/configs/demo_emoji.yaml` (held-out drawing style, 159 labels), seed "
                f"{args.seed}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
                f"{platform.machine()}, machine shared with other jobs (minutes are contended). "
                f"mAP over the test entries that are not known; the known set of each image is "
                f"the same for every row. Rows: {ROW_NOTES}\n\n" + "\n\n".join(sections) + "\n",
                encoding="utf-8")
            out.with_suffix(".json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
