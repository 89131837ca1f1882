"""``mlic bench``: how fast a model runs on each backend, on preprocessed inputs.

Latency: batch 1, ``warmup`` calls discarded, then ``repeats`` timed calls; p50 and p90 of them.
Throughput: batch ``batch_size``, the same warm-up, images per second from the median call.
Inputs are a fixed random tensor of the model's input size (normal values, like a normalised
image); decoding and resizing are not timed (they are the same for every backend).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mlic.export.runtime import load_runtime


@dataclass
class BenchResult:
    backend: str
    weights: str          # fp32 or int8
    compute: str          # f32, or bf16 where OpenVINO runs it by default
    p50_ms: float         # batch 1
    p90_ms: float         # batch 1
    images_per_s: float   # batch ``batch_size``
    batch_size: int
    repeats: int

    def as_dict(self) -> dict:
        return asdict(self)


def time_calls(call, inputs, warmup: int, repeats: int) -> np.ndarray:
    for _ in range(warmup):
        call(*inputs)
    seconds = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        call(*inputs)
        seconds[i] = time.perf_counter() - start
    return seconds


def bench_runtime(runtime, image_size: int, batch_size: int = 16, warmup: int = 5,
                  repeats: int = 30, seed: int = 0) -> BenchResult:
    rng = np.random.default_rng(seed)
    single = rng.standard_normal((1, 3, image_size, image_size), dtype=np.float32)
    batch = rng.standard_normal((batch_size, 3, image_size, image_size), dtype=np.float32)
    latency = time_calls(runtime, (single, None), warmup, repeats)
    # Fewer calls at the large batch: each is batch_size times longer, the median is as steady.
    batched = time_calls(runtime, (batch, None), max(1, warmup // 2), max(3, repeats // 4))
    return BenchResult(runtime.backend, getattr(runtime, "weights", "fp32"), runtime.compute,
                       1000 * float(np.percentile(latency, 50)), 1000 * float(np.percentile(latency, 90)),
                       batch_size / float(np.median(batched)), batch_size, repeats)


def default_backends(path: str | Path) -> list[str]:
    suffix = Path(path).suffix.lower()
    if suffix == ".xml":
        return ["openvino"]
    if suffix == ".onnx":
        return ["onnxruntime", "openvino"]
    return ["torch", "onnxruntime", "openvino"]


def bench_model(path: str | Path, backends: list[str] | None = None, batch_size: int = 16,
                warmup: int = 5, repeats: int = 30, threads: int | None = None,
                openvino_precisions: tuple[str | None, ...] = (None, "f32"), tag: str = "best"
                ) -> list[BenchResult]:
    """Benchmark ``path`` on each backend; OpenVINO at its default precision and at f32 (once
    when the default already is f32)."""
    if threads:
        torch.set_num_threads(int(threads))
    results = []
    for backend in backends or default_backends(path):
        precisions = (None,)
        if backend == "openvino":
            from mlic.export.openvino import cpu_precisions
            # Without BF16 on this CPU, OpenVINO's default already is f32: measure it once.
            precisions = openvino_precisions if "BF16" in cpu_precisions() else (None,)
        seen = set()
        for precision in precisions:
            runtime, metadata = load_runtime(path, backend, tag=tag, precision=precision,
                                             threads=threads)
            if runtime.compute in seen:
                continue
            seen.add(runtime.compute)
            size = int(metadata["preprocessing"]["image_size"])
            results.append(bench_runtime(runtime, size, batch_size, warmup, repeats))
    return results


def format_results(results: list[BenchResult]) -> str:
    reference = next((r.p50_ms for r in results if r.backend == "torch"), None)
    lines = ["| backend | weights | computes in | batch 1 p50 (ms) | p90 (ms) | speed-up vs torch "
             f"| batch {results[0].batch_size if results else ''} images/s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{reference / r.p50_ms:.2f}x" if reference else "-"
        lines.append(f"| {r.backend} | {r.weights} | {r.compute} | {r.p50_ms:.1f} | {r.p90_ms:.1f} "
                     f"| {ratio} | {r.images_per_s:.1f} |")
    return "\n".join(lines)
