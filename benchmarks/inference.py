"""Deployment speed and accuracy: eager PyTorch, onnxruntime and OpenVINO, FP32 and INT8.

    nice -n 10 python benchmarks/inference.py [--rounds 15] [--emoji data/emoji] \
        [--runs runs/export/lite0_linear runs/export/lite0_ctran]

Writes benchmarks/results/inference.md (and .json). Two parts:

1. Speed, random weights: EfficientNetV2-S at 448 px with ML-Decoder (cosine), the label-graph head
   and the plain pooled head, and EfficientNet-Lite0 at 224 px, 80 classes, each exported by
   ``mlic export`` (FP32 and INT8; INT8 calibrated on emoji drawings, which sets ranges but not
   speed). Latency at batch 1 (median and 90th percentile of warm calls) and throughput at batch
   8; backends are timed interleaved, round after round, so a change in machine load (other jobs
   share this CPU) affects all of them alike.
2. Accuracy: trained EfficientNet-Lite0 emoji models (96 px, the demo recipe) exported the same
   ways, mAP on the 1,621 Twitter test drawings for each backend and precision, with their speed.
   A run folder of ``--runs`` that holds no checkpoint is trained first (the demo recipe for
   ``TRAIN_EPOCHS`` epochs with the head its name ends in: ``lite0_linear``, ``lite0_ctran``;
   about 5 minutes each on 2 CPU cores), and the emoji benchmark is built if absent.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mlic.config import load_config
from mlic.data.emoji import build_emoji_benchmark
from mlic.data.formats import load_table
from mlic.data.images import load_rgb
from mlic.data.transforms import eval_transform
from mlic.demo import demo_config_path
from mlic.engine import train
from mlic.engine.checkpoint import load_model, model_metadata, save_model
from mlic.export import export_model
from mlic.export.openvino import cpu_precisions
from mlic.export.runtime import load_runtime
from mlic.flops import placeholder_label_context
from mlic.metrics import mean_average_precision
from mlic.models import create_model
from mlic.models.heads import head_uses_label_context

SPEED_MODELS = [  # (name, backbone, head, head params, size)
    ("EffNetV2-S + ML-Decoder (cosine)", "tf_efficientnetv2_s", "ml_decoder", {"cosine": True}, 448),
    ("EffNetV2-S + label graph (GAT)", "tf_efficientnetv2_s", "label_graph", {}, 448),
    ("EffNetV2-S + pooled linear", "tf_efficientnetv2_s", "linear", {}, 448),
    ("EfficientNet-Lite0 + linear", "tf_efficientnet_lite0", "linear", {}, 224),
]
# (label, backend, exported format or None for eager, int8, OpenVINO precision hint)
VARIANTS = [("torch eager FP32", "torch", None, False, None),
            ("onnxruntime FP32", "onnxruntime", "onnx", False, None),
            ("onnxruntime INT8", "onnxruntime", "onnx", True, None),
            ("OpenVINO FP32 (f32 hint)", "openvino", "openvino", False, "f32"),
            ("OpenVINO default precision", "openvino", "openvino", False, None),
            ("OpenVINO INT8", "openvino", "openvino", True, None)]
TRAIN_EPOCHS = 4  # the accuracy models: the demo recipe, shortened


def train_if_missing(run: Path, emoji: Path) -> None:
    """Train ``run`` (named ``..._<head>``) with the demo recipe unless it holds a checkpoint."""
    if (run / "checkpoints" / "best.json").is_file():
        return
    if run.exists() and any(run.iterdir()):
        raise SystemExit(f"{run} holds no checkpoints/best.json: remove it to train it anew")
    head = run.name.split("_", 1)[-1]
    print(f"training {run} ({head} head, {TRAIN_EPOCHS} epochs of the demo recipe)", flush=True)
    overrides = [f"data.train={emoji / 'style_train.csv'}", f"data.test={emoji / 'style_test.csv'}",
                 f"data.classes={emoji / 'labels.txt'}", f"output_dir={run.parent}",
                 f"name={run.name}", f"model.head={head}", f"train.epochs={TRAIN_EPOCHS}"]
    trained = train(load_config(demo_config_path(), overrides), progress=False, quiet=True)
    if run.exists():
        run.rmdir()
    trained.rename(run)  # runs are named <name>-<time>; the benchmark wants a fixed folder


def runtimes_for(checkpoint: Path, workdir: Path, calibration, calibration_size: int) -> dict:
    """Every variant of one checkpoint: label -> (runtime, seconds to export)."""
    out = {}
    files: dict[tuple[str, bool], tuple[Path, float]] = {}
    for label, backend, fmt, int8, hint in VARIANTS:
        if fmt is None:
            out[label] = (load_runtime(checkpoint, "torch")[0], 0.0)
            continue
        if (fmt, int8) not in files:
            start = time.perf_counter()
            path = export_model(checkpoint, fmt, out=workdir, int8=int8, calibration_data=calibration,
                                calibration_size=calibration_size)
            files[(fmt, int8)] = (path, time.perf_counter() - start)
        path, seconds = files[(fmt, int8)]
        runtime = load_runtime(path, backend, precision=hint)[0]
        out[label] = (runtime, seconds)
    return out


def interleaved_times(runtimes: dict, inputs: np.ndarray, rounds: int, warmup: int = 2) -> dict:
    for runtime, _ in runtimes.values():
        for _ in range(warmup):
            runtime(inputs)
    times = {label: [] for label in runtimes}
    for _ in range(rounds):
        for label, (runtime, _) in runtimes.items():
            start = time.perf_counter()
            runtime(inputs)
            times[label].append(time.perf_counter() - start)
    return {label: np.asarray(t) for label, t in times.items()}


def speed(runtimes: dict, size: int, rounds: int, batch: int) -> dict:
    rng = np.random.default_rng(0)
    single = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    many = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    latency = interleaved_times(runtimes, single, rounds)
    throughput = interleaved_times(runtimes, many, max(3, rounds // 5), warmup=1)
    return {label: {"p50_ms": 1000 * float(np.median(latency[label])),
                    "p90_ms": 1000 * float(np.percentile(latency[label], 90)),
                    "images_per_s": batch / float(np.median(throughput[label])),
                    "compute": runtimes[label][0].compute,
                    "export_s": runtimes[label][1]} for label in runtimes}


def synthetic_checkpoint(folder: Path, backbone: str, head: str, params: dict, size: int,
                         classes: int) -> Path:
    context = placeholder_label_context(classes) if head_uses_label_context(head) else None
    model = create_model(backbone, classes, head=head, head_params=params, image_size=size,
                         label_context=context).eval()
    names = [f"class{k}" for k in range(classes)]
    return save_model(folder, "best", model.state_dict(), model_metadata(model, names, 0.5))


def test_tensors(emoji: Path, label_names: list[str], checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
    table = load_table({"path": str(emoji / "style_test.csv"),
                        "classes": str(emoji / "labels.txt")}).with_labels(label_names)
    transform = eval_transform(load_model(checkpoint)[0].preprocessing)
    images = np.stack([transform(load_rgb(table.image_path(i))).numpy() for i in range(len(table))])
    return images, table.targets


def accuracy(run: Path, emoji: Path, workdir: Path, rounds: int, batch: int) -> dict:
    meta = json.loads((run / "checkpoints" / "best.json").read_text())
    images, targets = test_tensors(emoji, meta["label_names"], run)
    calibration = {"path": str(emoji / "style_train.csv"), "classes": str(emoji / "labels.txt")}
    runtimes = runtimes_for(run, workdir, calibration, 300)
    results = speed(runtimes, images.shape[-1], rounds, batch)
    for label, (runtime, _) in runtimes.items():
        scores = np.concatenate([runtime(images[i:i + 64]) for i in range(0, len(images), 64)])
        results[label]["mAP"] = 100 * mean_average_precision(scores, targets).map
    return {"head": meta["model"]["head"], "size": int(images.shape[-1]), "results": results}


def table(results: dict, with_map: bool) -> list[str]:
    torch_ms = results["torch eager FP32"]["p50_ms"]
    ov_fp32 = results["OpenVINO FP32 (f32 hint)"]["p50_ms"]
    base_map = results["torch eager FP32"].get("mAP")
    head = "| variant | computes in | batch 1 p50 ms | p90 ms | vs eager | vs OpenVINO FP32 | batch 8 img/s |"
    rule = "|---|---|---|---|---|---|---|"
    if with_map:
        head, rule = head + " test mAP | mAP vs eager |", rule + "---|---|"
    lines = [head, rule]
    for label, r in results.items():
        # An INT8 model's quantized operations run in int8; the hint covers the rest.
        compute = f"int8 + {r['compute']}" if "INT8" in label else r["compute"]
        line = (f"| {label} | {compute} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
                f"{torch_ms / r['p50_ms']:.2f}x | {ov_fp32 / r['p50_ms']:.2f}x | {r['images_per_s']:.1f} |")
        if with_map:
            line += f" {r['mAP']:.2f} | {r['mAP'] - base_map:+.2f} |"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--calibration-size", type=int, default=32,
                        help="calibration images of the random-weight models (speed only)")
    parser.add_argument("--emoji", default="data/emoji")
    parser.add_argument("--runs", nargs="*", default=["runs/export/lite0_linear",
                                                      "runs/export/lite0_ctran"])
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    emoji = Path(args.emoji)
    build_emoji_benchmark(emoji)
    for run in map(Path, args.runs):
        train_if_missing(run, emoji)
    calibration = {"path": str(emoji / "style_train.csv"), "classes": str(emoji / "labels.txt")}
    load_before = os.getloadavg()
    started = time.time()
    speed_results, accuracy_results = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for k, (name, backbone, head, params, size) in enumerate([] if args.skip_speed else SPEED_MODELS):
            print(f"speed: {name} at {size} px", flush=True)
            checkpoint = synthetic_checkpoint(scratch / f"m{k}", backbone, head, params, size,
                                              args.classes)
            runtimes = runtimes_for(checkpoint, scratch / f"m{k}" / "export", calibration,
                                    args.calibration_size)
            speed_results[f"{name}, {size} px"] = speed(runtimes, size, args.rounds, args.batch)
            del runtimes
        for run in map(Path, args.runs):
            print(f"accuracy: {run}", flush=True)
            accuracy_results[str(run)] = accuracy(run, emoji, scratch / run.name, args.rounds,
                                                  args.batch)
    load_after = os.getloadavg()

    bf16 = "BF16" in cpu_precisions()
    lines = [
        "# Inference: eager PyTorch, onnxruntime, OpenVINO; FP32 and INT8",
        "",
        "    nice -n 10 python benchmarks/inference.py",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.machine()}, "
        f"{platform.processor() or 'x86_64'}; torch {torch.__version__}, 2 threads per backend. "
        f"OpenVINO CPU capabilities: {', '.join(cpu_precisions())} "
        f"({'bf16 available: its default precision is bf16' if bf16 else 'no BF16: OpenVINO defaults to f32 here, so its default and f32 rows are the same path'}). "
        f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"(the benchmark itself loads both cores); backends are timed interleaved, round after "
        f"round, so a change in machine load affects all of them alike. "
        f"{time.time() - started:.0f} s in all.",
        "",
        "INT8: NNCF post-training quantization (`mlic export --int8`). Latency: batch 1, median and "
        "90th percentile of warm calls on preprocessed input; throughput: batch 8.",
        "",
    ]
    if speed_results:
        lines += ["## Speed (random weights, timm initialisation; speed only, no accuracy)", "",
                  f"{args.classes} classes. INT8 calibrated on {args.calibration_size} emoji "
                  f"drawings (ranges only: these weights are not trained).", ""]
        for name, results in speed_results.items():
            lines += [f"### {name}", "", *table(results, False), ""]
        graph = speed_results.get("EffNetV2-S + label graph (GAT), 448 px")
        plain = speed_results.get("EffNetV2-S + pooled linear, 448 px")
        if graph and plain:
            lines += ["Label graph vs plain pooled head (exported, batch 1 p50): " + ", ".join(
                f"{label} {graph[label]['p50_ms']:.1f} vs {plain[label]['p50_ms']:.1f} ms"
                for label in graph if label != "torch eager FP32") + ".", ""]
    if accuracy_results:
        lines += ["## Accuracy and speed of trained emoji models (EfficientNet-Lite0, 96 px)", "",
                  f"Trained with the demo recipe (`mlic/configs/demo_emoji.yaml`, {TRAIN_EPOCHS} epochs); test mAP "
                  "on the 1,621 Twitter drawings (159 labels); INT8 calibrated on 300 training "
                  "drawings. C-Tran is run with every label unknown (label_states all -1).", ""]
        for run, result in accuracy_results.items():
            lines += [f"### `{run}` ({result['head']} head)", "", *table(result["results"], True), ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"speed": speed_results,
                                                    "accuracy": accuracy_results}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
