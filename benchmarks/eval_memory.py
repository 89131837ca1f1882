"""Time and peak memory of ``metrics_report`` on random scores of a given size.

    OMP_NUM_THREADS=1 python benchmarks/eval_memory.py --rows 200000 --classes 600

The inputs are what evaluation holds: float32 probabilities and logits and int8 targets (2 %
positives, 20 % unknown, the rest negatives; OpenImages-like sparsity). Reported: seconds of one
call, and its peak memory beyond the inputs as numpy reports it to tracemalloc (a second call,
traced; tracing slows Python, not numpy); the process's peak resident memory, inputs included
(with ``--memmap``, the file pages it touched count too, though the system can drop them).
"""
from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np

from mlic.engine.evaluate import metrics_report


def random_inputs(rows: int, classes: int, seed: int = 0, folder: Path | None = None):
    """float32 logits and probabilities (memory-mapped ``.npy`` files in ``folder`` if given, as
    ``mlic eval`` keeps a large split), int8 targets; logits rounded to 1/64, so with ties."""
    rng = np.random.default_rng(seed)
    shape = (rows, classes)
    if folder is None:
        logits, probabilities = np.empty(shape, np.float32), np.empty(shape, np.float32)
    else:
        logits, probabilities = (np.lib.format.open_memmap(folder / f"{name}.npy", "w+",
                                                           np.float32, shape)
                                 for name in ("logits", "probabilities"))
    targets = np.empty(shape, dtype=np.int8)
    step = max(1, 2**24 // classes)
    for start in range(0, rows, step):  # in row blocks: no full-size float64 temporary
        draw = rng.random((min(step, rows - start), classes), dtype=np.float32)
        block = targets[start:start + step]
        block[:] = 0
        block[draw < 0.2] = -1
        block[draw > 0.98] = 1
        noise = rng.standard_normal(block.shape, dtype=np.float32)
        logits[start:start + step] = np.round((noise + 2 * block) * 64) / 64
        probabilities[start:start + step] = 1 / (1 + np.exp(-logits[start:start + step]))
    return probabilities, logits, targets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=600)
    parser.add_argument("--no-timing", action="store_true", help="only the traced call")
    parser.add_argument("--memmap", type=Path, help="keep the scores in files in this folder")
    args = parser.parse_args()
    probabilities, logits, targets = random_inputs(args.rows, args.classes, folder=args.memmap)
    names = [f"c{k}" for k in range(args.classes)]
    out = {"rows": args.rows, "classes": args.classes,
           "input_gb": (probabilities.nbytes + logits.nbytes + targets.nbytes) / 1e9}
    if not args.no_timing:
        start = time.perf_counter()
        report = metrics_report(probabilities, targets, names, ranking=logits)
        out["seconds"] = round(time.perf_counter() - start, 2)
        out["mAP"] = report["mAP"]
    tracemalloc.start()
    report = metrics_report(probabilities, targets, names, ranking=logits)
    out["peak_extra_gb"] = round(tracemalloc.get_traced_memory()[1] / 1e9, 3)
    tracemalloc.stop()
    out["mAP"] = report["mAP"]
    out["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
