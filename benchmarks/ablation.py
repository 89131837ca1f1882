"""The paper's ablation (its Table 6 order) on the emoji benchmark, beside the demo recipe and a
plain timm loop, with the decoder's health and the training curves of every row.

    python benchmarks/ablation.py                          # every row, seed 0
    python benchmarks/ablation.py --rows 3 4 --seeds 1 2   # more seeds for the rows that decide
    python benchmarks/ablation.py --quick                  # 1 epoch at 64 px: a smoke run
    python benchmarks/ablation.py --epochs 16 --rows 4 7 --results ablation_16_epochs

Held-out drawing style: fit on Google + Apple + Facebook less a random 15% (the validation split:
model selection, early stopping), test on Twitter; 159 labels. EfficientNet-Lite0 from the offline
ImageNet weights, 96 px, a shift of up to 4 px, no flips ("left" and arrows are labels), batch 64,
EMA 0.99 (the paper's 0.9997 averages over more steps than these runs have). Rows in the paper's
order, each adding one piece to the row above:

    linear + ASL          the paper's baseline: pooled linear head, ASL (4, 0, 0.05), SGD lr 0.007
    + SAM                 SAM around the SGD step, biases at 2x lr
    + ML-Decoder          ML-Decoder head, plain logits, ASL (256-d, FFN 1024, 32 queries: CPU size)
    + AM                  cosine ML-Decoder + AM (s 23, m 0, k 0.7: the released recipe)
    + AAM                 asymmetric focusing on top (gamma_neg 1, clip 0.05): the full recipe
    + label graph         the GAT label branch re-weighting the features before the cosine ML-Decoder

Every SGD row clips the gradient norm at 10 (``train.grad_clip``, mlic's default: without it the
ML-Decoder collapses in its first steps, docs/training.md), the backbone's and the head's apart
(``train.grad_clip_scope: parts``, the default; benchmarks/gradient_share.py shows why); one more
row runs the full recipe without clipping to show that collapse, and one more trains the head alone
for the first epoch (``train.head_warmup_epochs=1``). Each run records how it clipped
(the table's "clip" column), so runs from before the per-part default stay told apart. Then the demo recipe (linear, ASL, AdamW, EMA) and the plain
timm + BCE loop of benchmarks/plain_timm.py. Writes benchmarks/results/ablation.md (table, curves
as a PNG beside it) and ablation.json (every run).
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from mlic.config import load_config
from mlic.data.emoji import build_emoji_benchmark
from mlic.demo import demo_config_path
from mlic.engine import train
from mlic.errors import MlicError

RESULTS = Path(__file__).parent / "results"
SGD = ["train.optimizer=sgd", "train.lr=0.007", "train.momentum=0.9", "train.weight_decay=0.0005",
       "train.pct_start=0.2", "train.div_factor=100", "train.final_div_factor=1000",
       "train.grad_clip=10", "train.double_bias_lr=false", "train.sam=false"]
ASL = ["loss.name=asl", "loss.params={gamma_neg: 4, gamma_pos: 0, clip: 0.05}"]
SAM = ["train.sam=true", "train.double_bias_lr=true"]
DECODER = "embed_dim: 256, num_heads: 8, ff_dim: 1024, num_queries: 32"
MLD = ["model.head=ml_decoder", f"model.head_params={{{DECODER}}}"]
MLD_COS = ["model.head=ml_decoder", f"model.head_params={{{DECODER}, cosine: true}}"]
AM = ["loss.name=am", "loss.params={scale: 23, margin: 0.0, k: 0.7}"]
AAM = ["loss.name=aam",
       "loss.params={scale: 23, margin: 0.0, k: 0.7, gamma_neg: 1.0, gamma_pos: 0.0, clip: 0.05}"]
GRAPH = ["model.head=label_graph",
         f"model.head_params={{layer: gat, decoder: {{{DECODER}, cosine: true}}}}"]
PLAIN = "plain timm + BCE loop (benchmarks/plain_timm.py)"

ROWS = [
    ("linear + ASL (SGD)", SGD + ASL),
    ("+ SAM", SGD + ASL + SAM),
    ("+ ML-Decoder", SGD + ASL + SAM + MLD),
    ("+ AM", SGD + SAM + MLD_COS + AM),
    ("+ AAM (the full recipe)", SGD + SAM + MLD_COS + AAM),
    ("+ label graph", SGD + SAM + GRAPH + AAM),
    ("full recipe without gradient clipping", SGD + SAM + MLD_COS + AAM + ["train.grad_clip=0"]),
    ("demo recipe (linear, ASL, AdamW)", []),
    (PLAIN, None),
    # Candidates against the collapse at this budget (docs/training.md): the head trained alone
    # for the first epoch (train.head_warmup_epochs), so its first gradients never reach the
    # pretrained backbone.
    ("+ AAM, head warm-up 1 epoch", SGD + SAM + MLD_COS + AAM + ["train.head_warmup_epochs=1"]),
]


def run_row(name: str, overrides: list[str] | None, data: Path, runs: Path, seed: int,
            epochs: int, size: int) -> dict:
    fit, val = data / "style_fit.csv", data / "style_val.csv"  # written by build_emoji_benchmark
    start = time.time()
    if overrides is None:
        from plain_timm import plain_timm_loop  # benchmarks/ is on the path when run as a script
        result = plain_timm_loop(data, epochs + 2, size, seed, train_csv=fit.name, log=lambda _: None)
        return {"row": name, "seed": seed, "mAP": result["mAP"], "val_mAP": None,
                "minutes": result["minutes"], "epochs": epochs + 2, "curve": [], "run": None,
                "clip": "none"}
    config = load_config(demo_config_path(), [
        f"data.train={fit}", f"data.val={val}", f"data.test={data / 'style_test.csv'}",
        f"data.classes={data / 'labels.txt'}", f"output_dir={runs}", f"seed={seed}",
        f"train.epochs={epochs}", f"data.image_size={size}", "train.ema=0.99",
        "train.early_stopping=false", *overrides])
    clip = (f"{config['train']['grad_clip']:g} per {config['train']['grad_clip_scope']}"
            if config["train"]["grad_clip"] > 0 else "none")
    try:
        run = train(config, progress=False, quiet=True)
    except MlicError as e:  # e.g. a diverging loss: the row is recorded as failed
        print(f"seed {seed}  {name}: failed: {e}", flush=True)
        return {"row": name, "seed": seed, "mAP": float("nan"), "val_mAP": float("nan"),
                "minutes": (time.time() - start) / 60, "epochs": epochs, "curve": [], "run": None,
                "clip": clip}
    test = json.loads((run / "eval_test.json").read_text())
    with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
        curve = [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    best_val = max(float(r["val_mAP"]) for r in curve)
    return {"row": name, "seed": seed, "mAP": test["mAP"], "val_mAP": best_val,
            "minutes": (time.time() - start) / 60, "epochs": epochs, "curve": curve, "run": str(run),
            "clip": clip}


def summarise(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    mean = 100 * statistics.fmean(values)
    return (f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1
            else f"{mean:.2f}")


def health(result: dict) -> str:
    """The decoder's attn_ratio / image_share after the first and the last epoch."""
    rows = [r for r in result["curve"] if "attn_ratio" in r]
    if not rows:
        return ""
    first, last = rows[0], rows[-1]
    return (f"{float(first['attn_ratio']):.2g} / {float(first['image_share']):.2g} → "
            f"{float(last['attn_ratio']):.2g} / {float(last['image_share']):.2g}")


def merged_with_saved(results: list[dict], stem: str) -> list[dict]:
    """This process's runs over those already in <stem>.json (another process may be running
    other rows): a saved run of the same row, seed and clipping is replaced."""
    path = RESULTS / f"{stem}.json"
    saved = json.loads(path.read_text()) if path.is_file() else []
    mine = {(r["row"], r["seed"], r["clip"]) for r in results}
    return [r for r in saved if (r["row"], r["seed"], r["clip"]) not in mine] + results


def write_results(args, results: list[dict]) -> None:
    results = merged_with_saved(results, args.results) if args.append else results
    table = ["| row | clip | seeds | test mAP | best val mAP | decoder attn_ratio / image_share, "
             "epoch 1 → last | min per run |", "|---|---|---|---|---|---|---|"]
    for name, _ in ROWS:
        for clip in sorted({r["clip"] for r in results if r["row"] == name}):
            mine = [r for r in results if r["row"] == name and r["clip"] == clip]
            table.append(f"| {name} | {clip} | {len(mine)} | {summarise([r['mAP'] for r in mine])} | "
                         f"{summarise([r['val_mAP'] for r in mine])} | {health(mine[0])} | "
                         f"{statistics.fmean(r['minutes'] for r in mine):.1f} |")
    text = (f"# Ablation on the emoji benchmark (the paper's Table 6 order)\n\n"
            f"Command: `python benchmarks/ablation.py {' '.join(args.argv)}`; seeds "
            f"{sorted({r['seed'] for r in results})}, {args.epochs} epochs per mlic row "
            f"({args.epochs + 2} for the plain loop, about the demo's wall time), {args.size} px, "
            f"EfficientNet-Lite0 (offline ImageNet weights), batch 64, EMA 0.99, no early stopping; "
            f"mean ± sd over seeds; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{platform.machine()}; {time.strftime('%Y-%m-%d')}, "
            f"{len(results)} runs.\n\n"
            "Test: the Twitter drawings (1,621). Validation: a random 15% of the training drawings "
            "(selection of model vs EMA per epoch). Decoder health (mlic.engine.decoder_health, on "
            "64 validation images): a collapsed decoder has attn_ratio in the tens and image_share "
            f"near 0. Curves: {args.results}.png.\n\n" + "\n".join(table) + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.results}.md").write_text(text, encoding="utf-8")
    (RESULTS / f"{args.results}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    plot_curves(results, RESULTS / f"{args.results}.png")


def plot_curves(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(results):
        if not r["curve"] or r["seed"] != min(x["seed"] for x in results if x["row"] == r["row"]):
            continue
        epochs = [int(c["epoch"]) for c in r["curve"]]
        style = {"marker": "o", "label": f"{r['row']} (clip {r['clip']})", "color": f"C{i % 10}",
                 "linestyle": "--" if r["clip"].endswith("per model") else "-"}  # the old global clip
        left.plot(epochs, [100 * float(c["val_mAP"]) for c in r["curve"]], **style)
        if any("image_share" in c for c in r["curve"]):
            right.plot(epochs, [float(c.get("image_share", "nan")) for c in r["curve"]], **style)
    left.set(xlabel="epoch", ylabel="validation mAP", title="validation mAP (model)")
    right.set(xlabel="epoch", ylabel="image_share", yscale="log",
              title="decoder output: share that depends on the image")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/emoji"))
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--rows", type=int, nargs="+",
                        help="row indices to run, in this order (default: all)")
    parser.add_argument("--append", action="store_true",
                        help="merge with the runs in benchmarks/results/ablation.json (other rows or "
                             "seeds, possibly from a process running beside this one)")
    parser.add_argument("--quick", action="store_true", help="1 epoch at 64 px, no results file")
    parser.add_argument("--results", default="ablation",
                        help="name of the results files (benchmarks/results/NAME.md, .json, .png): "
                             "another budget gets its own table")
    import sys
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    if args.quick:
        args.epochs, args.size = 1, 64
    build_emoji_benchmark(args.data)
    results: list[dict] = []
    for seed in args.seeds:
        for index in (args.rows if args.rows is not None else range(len(ROWS))):
            name, overrides = ROWS[index]
            result = run_row(name, overrides, args.data, args.runs, seed, args.epochs, args.size)
            results.append(result)
            print(f"seed {seed}  {name:<40} test mAP {100 * result['mAP']:.2f}  "
                  f"{result['minutes']:.1f} min  {health(result)}", flush=True)
            if not args.quick:
                write_results(args, results)  # after every run: a partial table survives


if __name__ == "__main__":
    main()
