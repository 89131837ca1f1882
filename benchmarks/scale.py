"""Time and peak memory of mlic's data side at OpenImages scale, on synthetic annotations.

    python benchmarks/scale.py                       # 100k and 500k images, 600 and 9,600 classes
    python benchmarks/scale.py --sizes 100000,2000000 --classes 600,9600 --image-sizes 100000

Annotations are written in the real layouts: OpenImages V6 (``ImageID,Source,LabelName,
Confidence``, rows sorted by image, 19,957 classes described, about 6.6 label rows per image as in
V6's human-verified labels, the kept classes given as a ``class-descriptions-boxable.csv``-style
keep list) and the plain CSV (``image,labels,unknown``). No images are needed, except for the
start-up step, whose placeholder images are hard links to one small JPEG.

Each step runs in a fresh subprocess, which reports its wall time and its peak resident memory
(``ru_maxrss``, which includes the ~0.4 GB of imported torch/numpy/scipy, given as ``base``):

* load: ``load_table`` of the training file (OpenImages with the keep list, or the CSV);
* ready: what training does before the first step without images: read and align the splits
  (``load_splits``), build the Dataset, read the targets of 10,000 random items;
* stats: ``mlic data stats`` (``describe``), its time measured after the load;
* evaluate: ``metrics_report`` on random float32 scores for an evaluation split of N / 50 images
  (V6's validation split is 1/216 of its training split, its test split 1/72);
* start-up: the decode check of every image with an empty check cache, then again with it
  (what a resume or a later run pays), ``--image-sizes`` only.

Results: ``benchmarks/results/scale.md`` and ``.json``, with a linear extrapolation to V6
(9,011,219 training images) from the two largest sizes measured.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
V6_IMAGES = 9_011_219
V6_CLASSES = 19_957
ROWS_PER_IMAGE = 6.6  # V6: about 59.9 M human-verified image-level labels over 9.0 M images
EVAL_SHARE = 50


# ---------------------------------------------------------------- synthetic annotation files

def mid(j: int) -> str:
    return f"/m/0{j:06x}"


def write_openimages(folder: Path, images: int, classes: int, seed: int = 0) -> dict:
    """The labels file, the full descriptions file and a keep list of ``classes`` MIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = folder / "oidv6-train-annotations-human-imagelabels.csv"
    descriptions = folder / "oidv6-class-descriptions.csv"
    keep = folder / "class-descriptions-boxable.csv"
    spec = {"format": "openimages", "path": str(labels), "classes": str(descriptions),
            "keep": str(keep), "root": str(folder / "images")}
    if labels.is_file():
        return spec
    rng = np.random.default_rng(seed)
    descriptions.write_text("LabelName,DisplayName\n" + "".join(
        f"{mid(j)},Class {j}\n" for j in range(V6_CLASSES)))
    # Class popularity is long-tailed (Zipf-like, over a random order of the MIDs) and the kept
    # classes are the most common ones: 41% of the rows for 600 kept, 84% for 9,600.
    popularity = rng.permutation(V6_CLASSES)
    weight = np.empty(V6_CLASSES)
    weight[popularity] = 1.0 / np.arange(1, V6_CLASSES + 1) ** 0.8
    weight /= weight.sum()
    kept = np.sort(popularity[:classes])
    keep.write_text("".join(f"{mid(j)},Class {j}\n" for j in kept))
    tails = [f",verification,{mid(j)}," for j in range(V6_CLASSES)]
    tmp = labels.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
        for start in range(0, images, 100_000):
            count = min(100_000, images - start)
            per_image = 1 + rng.poisson(ROWS_PER_IMAGE - 1, size=count)
            image = np.repeat(np.arange(start, start + count), per_image)
            label = rng.choice(V6_CLASSES, size=len(image), p=weight)
            confidence = (rng.random(len(image)) < 0.6).astype(int)
            ids = [f"{i:016x}" for i in range(start, start + count)]
            f.write("".join(f"{ids[i - start]}{tails[j]}{c}\n"
                            for i, j, c in zip(image.tolist(), label.tolist(),
                                               confidence.tolist())))
    tmp.rename(labels)
    return spec


def write_plain_csv(folder: Path, images: int, classes: int, seed: int = 0,
                    name: str = "train.csv", image_folder: str = "") -> dict:
    """``image,labels,unknown``: about 3 positive labels an image, one unknown on 10%."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    spec = {"format": "csv", "path": str(path)}
    if path.is_file():
        return spec
    rng = np.random.default_rng(seed)
    names = [f"label{j:05d}" for j in range(classes)]
    weight = 1.0 / np.arange(1, classes + 1) ** 0.8
    weight /= weight.sum()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write("image,labels,unknown\n")
        for start in range(0, images, 100_000):
            count = min(100_000, images - start)
            per_image = 1 + rng.poisson(2, size=count)
            label = rng.choice(classes, size=per_image.sum(), p=weight)
            ends = np.cumsum(per_image)
            unknown = np.where(rng.random(count) < 0.1, rng.integers(0, classes, count), -1)
            lines = []
            for k, i in enumerate(range(start, start + count)):
                chosen = sorted(set(label[ends[k] - per_image[k]:ends[k]].tolist()))
                u = unknown[k] if unknown[k] >= 0 and unknown[k] not in chosen else -1
                lines.append(f"{image_folder}d{i % 1000:03d}/{i:08d}.jpg,"
                             f"{'|'.join(names[j] for j in chosen)},"
                             f"{names[u] if u >= 0 else ''}\n")
            f.write("".join(lines))
    tmp.rename(path)
    return spec


def placeholder_images(folder: Path, images: int) -> None:
    """``d000/00000000.jpg`` ...: hard links to one 64 x 64 JPEG (a directory entry each)."""
    marker = folder / f".linked-{images}"
    if marker.exists():
        return
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(min(images, 1000)):
        (folder / f"d{d:03d}").mkdir(exist_ok=True)
    for i in range(images):
        if i % 50_000 == 0:  # a file takes at most 65,000 links (ext4)
            source = folder / f"source{i // 50_000}.jpg"
            Image.new("RGB", (64, 64), (120, 60, 30)).save(source, quality=90)
        target = folder / f"d{i % 1000:03d}" / f"{i:08d}.jpg"
        if not target.exists():
            os.link(source, target)
    marker.touch()


# ---------------------------------------------------------------- the measured steps (children)

def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def child(step: str, spec: dict) -> dict:
    import scipy.sparse  # noqa: F401  imported before the baseline, as training has them
    import torch  # noqa: F401
    from mlic.data.dataset import MultiLabelDataset
    from mlic.data.formats import load_table
    from mlic.engine.evaluate import metrics_report
    from mlic.engine.splits import load_splits
    base = peak_mb()
    start = time.perf_counter()
    out: dict = {}
    if step == "load":
        table = load_table(spec)
        out["images"], out["labels"] = len(table), table.num_labels
        out["notes"] = table.extra.get("notes", [])
        if hasattr(table, "nbytes"):
            out["table_mb"] = table.nbytes() / 2**20
    elif step == "ready":
        splits = load_splits({"train": spec})
        dataset = MultiLabelDataset(splits.train, transform=lambda image: image)
        rng = np.random.default_rng(0)
        for i in rng.integers(0, len(dataset), 10_000):
            target = dataset.target(int(i)) if hasattr(dataset, "target") else dataset.targets[i]
        out["images"], out["labels"] = len(dataset), len(target)
    elif step == "stats":
        from mlic.data.stats import describe
        table = load_table(spec)
        loaded = time.perf_counter()
        text = describe(table)
        out["stats_s"] = time.perf_counter() - loaded
        out["lines"] = len(text.splitlines())
    elif step == "evaluate":
        table = load_table(spec)
        n = max(len(table) // EVAL_SHARE, 100)
        targets = table.rows(np.arange(n)) if hasattr(table, "rows") else table.targets[:n]
        scores = np.random.default_rng(0).random(targets.shape, dtype=np.float32)
        loaded = time.perf_counter()
        before = peak_mb()
        report = metrics_report(scores, targets, table.label_names)
        out["evaluate_s"] = time.perf_counter() - loaded
        out["eval_images"], out["mAP"] = n, float(report["mAP"])
        out["before_eval_mb"] = before
    elif step in ("first_check", "cached_check"):
        from mlic.data.validate import validate_images
        table = load_table(spec)
        loaded = time.perf_counter()
        kwargs = {"cache_dir": Path(os.environ["MLIC_CACHE_DIR"]) / "image_checks"}
        try:
            validate_images(table, "decode", progress=False, **kwargs)
        except TypeError:  # code without the check cache
            validate_images(table, "decode", progress=False)
        out["check_s"] = time.perf_counter() - loaded
        out["images"] = len(table)
    out["seconds"] = time.perf_counter() - start
    out["peak_mb"], out["base_mb"] = peak_mb(), base
    return out


def run_child(step: str, spec: dict, env: dict | None = None, timeout: float = 3600) -> dict:
    command = [sys.executable, __file__, "--child", step, "--spec", json.dumps(spec)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for attempt in range(2):  # once more after a failure: a file being edited under a run
        done = subprocess.run(command, capture_output=True, text=True, env=full_env,
                              timeout=timeout)
        if done.returncode == 0:
            break
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the table

def extrapolate(points: list[tuple[int, float]], target: int) -> float | None:
    """Linear in the number of images, through the two largest measured sizes."""
    points = sorted(p for p in points if p[1] is not None)
    if len(points) < 2:
        return None
    (n0, y0), (n1, y1) = points[-2], points[-1]
    return y1 + (y1 - y0) * (target - n1) / (n1 - n0)


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = ["# Data side at OpenImages scale (benchmarks/scale.py)", "",
             f"Machine: {os.cpu_count()} CPU cores, OMP_NUM_THREADS=1, one subprocess per step; "
             "time in seconds, peak resident memory in GB (ru_maxrss, including the imported "
             "libraries torch, scipy and mlic's engine: column 'base'). 'ready' is load_splits + "
             "the Dataset + 10,000 items' targets (no images); 'eval' is metrics_report on "
             "random scores for N/50 images.", ""]
    head = ("| format | images | classes | load s | load GB | ready s | ready GB | stats s "
            "| stats GB | eval images | eval s | eval GB | base GB |")
    lines += [head, "|---" * (head.count("|") - 1) + "|"]

    def cell(r: dict, key: str, what: str = "seconds", scale: float = 1.0) -> str:
        value = r.get(key, {}).get(what)
        return "-" if value is None else f"{value / scale:.2f}"
    for r in sorted((r for r in results if "load" in r),
                    key=lambda r: (r["images"], r["classes"], r["format"])):
        lines.append(f"| {r['format']} | {r['images']:,} | {r['classes']:,} | "
                     f"{cell(r, 'load')} | {cell(r, 'load', 'peak_mb', 1024)} | "
                     f"{cell(r, 'ready')} | {cell(r, 'ready', 'peak_mb', 1024)} | "
                     f"{cell(r, 'stats', 'stats_s')} | {cell(r, 'stats', 'peak_mb', 1024)} | "
                     f"{r.get('evaluate', {}).get('eval_images', 0):,} | "
                     f"{cell(r, 'evaluate', 'evaluate_s')} | "
                     f"{cell(r, 'evaluate', 'peak_mb', 1024)} | "
                     f"{cell(r, 'load', 'base_mb', 1024)} |")
    lines += ["", f"## Extrapolated to V6 ({V6_IMAGES:,} training images)", "",
              "Linear in the number of images through the two largest sizes measured.", "",
              "| format | classes | ready s | ready GB | stats s | stats GB |", "|---|---|---|---|---|---|"]
    for fmt in sorted({r["format"] for r in results if "load" in r}):
        for classes in sorted({r["classes"] for r in results}):
            rows = [r for r in results if r["format"] == fmt and r["classes"] == classes]
            values = []
            for key, what, scale in (("ready", "seconds", 1), ("ready", "peak_mb", 1024),
                                     ("stats", "stats_s", 1), ("stats", "peak_mb", 1024)):
                # Memory: what the data adds to the imported libraries grows with the images.
                base = [r.get(key, {}).get("base_mb", 0) if what == "peak_mb" else 0
                        for r in rows]
                y = extrapolate([(r["images"], r.get(key, {}).get(what, np.nan) - b)
                                 for r, b in zip(rows, base)], V6_IMAGES)
                values.append("-" if y is None else f"{(y + max(base)) / scale:.1f}")
            lines.append(f"| {fmt} | {classes:,} | " + " | ".join(values) + " |")
    starts = [r for r in results if "first_check" in r]
    if starts:
        lines += ["", "## Start-up: the decode check of every image, without and with the cache",
                  "", "Placeholder images: hard links to one 64 x 64 JPEG. 'first' decodes every "
                  "image (and writes the cache), 'cached' is the next start (a resume or a later "
                  "run): one stat per image, no decoding.", "",
                  "| images | first check s | cached check s | cached GB |", "|---|---|---|---|"]
        for r in starts:
            f, c = r["first_check"], r["cached_check"]
            lines.append(f"| {r['images']:,} | {f.get('check_s', float('nan')):.1f} | "
                         f"{c.get('check_s', float('nan')):.1f} | "
                         f"{c.get('peak_mb', float('nan')) / 1024:.2f} |")
        per_image = [r["cached_check"].get("check_s", 0) / r["images"] for r in starts]
        first = [r["first_check"].get("check_s", 0) / r["images"] for r in starts]
        lines += ["", f"V6 ({V6_IMAGES:,} images), linear: first check "
                  f"{first[-1] * V6_IMAGES / 60:.0f} min of decoding at this rate (real JPEGs are "
                  f"larger), cached start {per_image[-1] * V6_IMAGES:.0f} s."]
    notes = [n for r in results for n in r.get("load", {}).get("notes", [])]
    if notes:
        lines += ["", "Keep-list notes (OpenImages):", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def add(results: list[dict], result: dict, output: Path) -> None:
    """Add (or replace) one measured configuration and save them all, so a crash keeps them."""
    key = (result["format"], result["images"], result["classes"])
    results[:] = [r for r in results if (r["format"], r["images"], r["classes"]) != key]
    results.append(result)
    output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,500000",
                        help="numbers of training images, comma-separated")
    parser.add_argument("--classes", default="600,9600", help="kept classes, comma-separated")
    parser.add_argument("--formats", default="openimages,csv")
    parser.add_argument("--steps", default="load,ready,stats,evaluate")
    parser.add_argument("--image-sizes", default="100000",
                        help="sizes for the start-up step (placeholder images); '' for none")
    parser.add_argument("--workdir", default="/tmp/mlic-scale")
    parser.add_argument("--output", default=str(HERE / "results" / "scale"))
    parser.add_argument("--add", action="store_true",
                        help="keep the results already in OUTPUT.json, adding these")
    parser.add_argument("--child")
    parser.add_argument("--spec")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.spec))))
        return

    work = Path(args.workdir)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    results = []
    if args.add:  # earlier results stay, unless measured again now
        results = json.loads(output.with_suffix(".json").read_text())
    for images in [int(s) for s in args.sizes.split(",") if s]:
        for classes in [int(c) for c in args.classes.split(",") if c]:
            for fmt in args.formats.split(","):
                folder = work / f"{fmt}-{images}-{classes}"
                t0 = time.perf_counter()
                spec = (write_openimages(folder, images, classes) if fmt == "openimages"
                        else write_plain_csv(folder, images, classes))
                result = {"format": fmt, "images": images, "classes": classes,
                          "write_s": time.perf_counter() - t0,
                          "file_mb": Path(spec["path"]).stat().st_size / 2**20}
                for step in args.steps.split(","):
                    result[step] = run_child(step, spec)
                    print(f"{fmt} {images} x {classes} {step}: {result[step]}", flush=True)
                add(results, result, output)
    for images in [int(s) for s in args.image_sizes.split(",") if s]:
        folder = work / f"images-{images}"
        placeholder_images(folder / "images", images)
        spec = write_plain_csv(folder, images, 600, name="labels.csv", image_folder="images/")
        cache = folder / "cache"
        for old in (cache / "image_checks").glob("*.npz") if cache.is_dir() else []:
            old.unlink()
        result = {"format": "csv-images", "images": images, "classes": 600}
        for step in ("first_check", "cached_check"):
            result[step] = run_child(step, spec, {"MLIC_CACHE_DIR": str(cache)})
            print(f"start-up {images} {step}: {result[step]}", flush=True)
        add(results, result, output)

    table = [r for r in results if r["format"] != "csv-images"]
    text = markdown(table + [r for r in results if r["format"] == "csv-images"], args)
    output.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
