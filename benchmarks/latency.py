"""What each head costs per image: eager PyTorch CPU latency at batch 1, one backbone.

    python benchmarks/latency.py [--backbone tf_efficientnetv2_s] [--size 448] [--classes 80]

Writes benchmarks/results/latency.md. Median and 90th percentile of warm runs (the first calls
are much slower and are not timed); heads are measured interleaved, round after round, so a
change in machine load affects all of them alike.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mlic.flops import model_cost, placeholder_label_context
from mlic.models import create_model
from mlic.models.heads import head_uses_label_context

HEADS = [("linear", {}), ("label_graph", {}), ("ml_gcn", {}), ("ml_decoder", {}),
         ("ml_decoder", {"cosine": True}), ("query2label", {"ff_dim": 1280, "input_projection": True})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnetv2_s")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.randn(1, 3, args.size, args.size)
    models = {}
    for head, params in HEADS:
        context = placeholder_label_context(args.classes) if head_uses_label_context(head) else None
        model = create_model(args.backbone, args.classes, head=head, head_params=params,
                             label_context=context).eval()
        name = head + (" (cosine)" if params.get("cosine") else "")
        models[name] = (model, model_cost(model, args.size).gmacs_total)
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model, _ in models.values():  # warm-up
            for _ in range(3):
                model(images)
        for _ in range(args.rounds):
            for name, (model, _) in models.items():
                start = time.perf_counter()
                model(images)
                times[name].append(time.perf_counter() - start)
    base = float(np.median(times["linear"]))
    lines = ["| head | GFLOPs | p50 (ms) | p90 (ms) | vs linear |", "|---|---|---|---|---|"]
    for name, (_, gmacs) in models.items():
        p50, p90 = np.median(times[name]), np.percentile(times[name], 90)
        lines.append(f"| {name} | {gmacs:.2f} | {1000 * p50:.1f} | {1000 * p90:.1f} | {p50 / base:.3f} |")
    table = "\n".join(lines)
    print(table)
    text = (f"# Per-image latency of each head: {args.backbone}, {args.size} px, {args.classes} classes\n\n"
            f"Command: `python benchmarks/latency.py --backbone {args.backbone} --size {args.size} "
            f"--classes {args.classes}`; eager PyTorch {torch.__version__}, batch 1, "
            f"{args.threads} threads, {platform.processor() or platform.machine()}, "
            f"{args.rounds} warm rounds (heads interleaved).\n\n{table}\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
