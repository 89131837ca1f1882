"""What the run report and the explanation maps cost, and where the maps point on emoji drawings.

    python benchmarks/report_explain.py --run RUN [--images 40] [--large-images 100000]

Writes benchmarks/results/report_explain.md (and .json) and explain_emoji.png. ``RUN`` is a trained
emoji run (the demo recipe, or any run on the emoji benchmark's splits) evaluated on its test split
(``mlic eval RUN`` leaves predictions_test.npz, which the gallery and curves read). Four parts:

1. The report of that run: time to write report.html (median of 3) and its size.
2. The same report for a synthetic large run: ``--large-images`` images x 1,000 labels (about 3
   per image) in the training table and the evaluation, to show that the size and the time stay
   bounded (the scores are sampled, the gallery shows at most 60 thumbnails).
3. ``mlic explain``: time per image (model loaded once, median over ``--images`` test drawings) for
   each method the head allows, and a figure of maps of drawings whose answer can be seen: the
   "heart" of heart drawings, the "cat" of cat faces, next to the "face" map.
4. ``mlic explain RUN`` without images (the gallery's lessons): its time, and the report's size
   with the maps on its cards. The run's explain/ folder is removed first and left with these.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mlic.explain import Explainer, explain_examples, overlay
from mlic.predictions import load_predictions, predictions_file, save_predictions
from mlic.report import teaching_examples, write_report

RESULTS = Path(__file__).parent / "results"
# Twitter drawings (the test vendor) with a label one can point at, and a second label to contrast
SHOWN = [("1F63B", "heart", "cat"), ("1F970", "heart", "face"), ("1F48C", "heart", "mail"),
         ("1F63A", "cat", "face"), ("1F498", "heart", "arrow")]


def time_report(run: Path, repeats: int = 3) -> dict:
    """The first write (which reads the training labels for the co-occurrence and caches their pair
    counts) and the median of ``repeats`` rewrites (as after eval, tune-thresholds, explain)."""
    (run / "label_pairs.npz").unlink(missing_ok=True)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        page = write_report(run)
        seconds.append(time.perf_counter() - start)
    text = page.read_text(encoding="utf-8")
    return {"first_seconds": round(seconds[0], 2),
            "rewrite_seconds": round(statistics.median(seconds[1:]), 2),
            "bytes": page.stat().st_size, "thumbnails": text.count("data:image/jpeg"),
            "figures": text.count("data:image/png")}


def large_run(folder: Path, images: int, labels: int = 1000, seed: int = 0) -> Path:
    """A run folder as training leaves it, with synthetic labels and scores of ``images`` images."""
    from mlic.config import default_config, save_config
    from mlic.engine.checkpoint import write_json
    from mlic.engine.evaluate import metrics_report
    rng = np.random.default_rng(seed)
    names = [f"label {i:04d}" for i in range(labels)]
    weights = 1 / np.arange(1, labels + 1)  # a long tail, as real label sets have
    weights /= weights.sum()

    def targets() -> np.ndarray:
        out = np.zeros((images, labels), np.int8)
        picks = rng.choice(labels, size=(images, 3), p=weights)
        out[np.arange(images)[:, None], picks] = 1
        return out

    pictures = folder / "images"
    pictures.mkdir(parents=True)
    files = []
    for i in range(100):  # the gallery reads a few dozen; paths repeat over these
        path = pictures / f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    train = targets()
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        for i, row in enumerate(train):
            writer.writerow([f"images/{i:06d}.jpg", "|".join(names[j] for j in
                                                             np.flatnonzero(row))])
    run = folder / "run"
    (run / "checkpoints").mkdir(parents=True)
    config = default_config()
    config["data"].update(train=str(folder / "train.csv"), classes=names)
    save_config(config, run / "config.yaml")
    test = targets()
    scores = np.clip(0.5 * test + 0.6 * rng.random(test.shape, dtype=np.float32), 0, 1)
    write_json(run / "checkpoints" / "best.json", {"label_names": names, "thresholds": 0.5,
                                                   "model": config["model"]})
    report = metrics_report(scores, test, names)
    report["split"] = "test"
    write_json(run / "eval_test.json", report)
    save_predictions(predictions_file(run, "test"), [files[i % 100] for i in range(images)], names,
                     scores, test)
    return run


def time_explain(run: Path, images: list[str], methods: list[str]) -> dict:
    out = {}
    for method in methods:
        explainer = Explainer.load(run, method)
        explainer(images[0], ["face"] if "face" in explainer.label_names else None)  # warm-up
        seconds = []
        for path in images:
            start = time.perf_counter()
            explainer(path, None)
            seconds.append(time.perf_counter() - start)
        out[method] = {"ms_per_image": round(1000 * statistics.median(seconds), 1),
                       "images": len(images)}
    return out


def explain_figure(run: Path, emoji: Path, methods: list[str], out: Path) -> list[dict]:
    """Rows of a drawing, then per method the maps of its two labels; and how much the two maps
    differ (mean absolute difference: 0 means the method gives both labels one map)."""
    explainers = {m: Explainer.load(run, m) for m in methods}
    rows, found, tile = [], [], 196
    for code, first, second in SHOWN:
        path = emoji / "images" / "twitter" / f"{code}.png"
        if not path.is_file():
            continue
        picture = Image.open(path).convert("RGB").resize((192, 192))
        tiles = [picture]
        for method, explainer in explainers.items():
            maps = explainer(picture, [first, second])
            tiles += [overlay(picture, m.heat) for m in maps]
            found.append({"emoji": code, "method": method,
                          "labels": {m.label: round(m.probability, 3) for m in maps},
                          "difference": round(float(np.abs(maps[0].heat - maps[1].heat).mean()), 3)})
        row = Image.new("RGB", (len(tiles) * tile, tile), "white")
        for k, picture_tile in enumerate(tiles):
            row.paste(picture_tile, (k * tile + 2, 2))
        rows.append(row)
    figure = Image.new("RGB", (rows[0].width, tile * len(rows)), "white")
    for k, row in enumerate(rows):
        figure.paste(row, (0, tile * k))
    figure.save(out)
    return found


def gallery_maps(run: Path) -> dict:
    """`mlic explain RUN`: the gallery's images with their wrong labels mapped, then the report
    with the maps on its cards (the run's explain/ folder is replaced)."""
    shutil.rmtree(run / "explain", ignore_errors=True)
    start = time.perf_counter()
    entries = explain_examples(run, teaching_examples(run))
    seconds = time.perf_counter() - start
    report = time_report(run)
    text = (run / "report.html").read_text(encoding="utf-8")
    return {"maps": len(entries), "images": len({e["image"] for e in entries}),
            "seconds": round(seconds, 1), "maps_on_cards": text.count('class="map"'),
            "report_bytes": report["bytes"], "report_rewrite_seconds": report["rewrite_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an emoji run evaluated on its test split")
    parser.add_argument("--emoji", default="/work/data/emoji", help="the emoji benchmark's folder")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--large-images", type=int, default=100_000)
    args = parser.parse_args()
    run = Path(args.run)
    if not predictions_file(run, "test").is_file():
        raise SystemExit(f"{run}: no predictions_test.npz; run `mlic eval {run}` first")
    results: dict = {"run": str(run)}
    shutil.rmtree(run / "explain", ignore_errors=True)  # the report as training leaves it
    results["report"] = time_report(run)
    with tempfile.TemporaryDirectory() as temp:
        start = time.perf_counter()
        large = large_run(Path(temp), args.large_images)
        results["large_setup_seconds"] = round(time.perf_counter() - start, 1)
        results["large_report"] = {"images": args.large_images, "labels": 1000,
                                   "kept_scores_of": len(load_predictions(
                                       predictions_file(large, "test")).paths),
                                   **time_report(large)}
        shutil.copy(large / "report.html", Path(temp) / "keep.html")
    paths = load_predictions(predictions_file(run, "test")).paths[:args.images]
    head = json.loads((run / "checkpoints" / "best.json").read_text())["model"]["head"]
    methods = ["attention", "recipro_cam"] if head in ("ml_decoder", "query2label", "ctran") \
        else ["recipro_cam"]
    results["explain"] = time_explain(run, paths, methods)
    results["explain_figure"] = explain_figure(run, Path(args.emoji), methods,
                                               RESULTS / "explain_emoji.png")
    results["gallery_maps"] = gallery_maps(run)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report_explain.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "report_explain.md").write_text(markdown(results, args), encoding="utf-8")
    print(json.dumps(results, indent=2))


def markdown(r: dict, args) -> str:
    config = json.loads((Path(r["run"]) / "checkpoints" / "best.json").read_text())
    model = config["model"]
    lines = [
        "# Report and explanation maps: cost, size, and where the maps point",
        "",
        f"`python benchmarks/report_explain.py --run RUN --images {args.images} --large-images "
        f"{args.large_images}` on {time.strftime('%Y-%m-%d')}, a 2-core CPU shared with other jobs "
        f"(one torch thread). RUN: {model['backbone']} + {model['head']} at "
        f"{config['preprocessing']['image_size']} px trained on the emoji benchmark "
        f"(epoch {config.get('epoch')}), evaluated on its 1,621 test drawings (`mlic eval RUN`).",
        "",
        "| report.html of | first write | rewrite (median of 3) | size | thumbnails | figures |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (("the emoji run", "report"),
                      (f"a synthetic run, {r['large_report']['images']:,} images x 1,000 labels "
                       f"(scores of {r['large_report']['kept_scores_of']:,} kept)", "large_report")):
        x = r[key]
        lines.append(f"| {name} | {x['first_seconds']:.2f} s | {x['rewrite_seconds']:.2f} s | "
                     f"{x['bytes'] / 1e3:.0f} kB | {x['thumbnails']} | {x['figures']} |")
    lines += ["", "The first write reads the training split's label table for the co-occurrence "
              "(most of its time on the large run) and keeps the pair counts in label_pairs.npz; "
              "later writes (after eval, tune-thresholds, explain) reuse them.", "",
              "| `mlic explain` method | time per image (median) | images |", "|---|---|---|"]
    for method, x in r["explain"].items():
        lines.append(f"| {method} | {x['ms_per_image']:.0f} ms | {x['images']} |")
    g = r["gallery_maps"]
    lines += ["", "Time per image: loading and resizing the drawing, the backbone, the maps of the "
              "labels the model predicts, stretched to the image; the model is loaded once.", "",
              f"`mlic explain RUN` (no images: the gallery's images with the labels each got "
              f"wrong): {g['maps']} maps of {g['images']} images in {g['seconds']:.1f} s, model "
              f"loading included; the report then shows {g['maps_on_cards']} of them on its cards "
              f"and the rest apart: {g['report_bytes'] / 1e3:.0f} kB, rewritten in "
              f"{g['report_rewrite_seconds']:.2f} s.", "",
              "## Where the maps point (explain_emoji.png)", "",
              "Each row: a Twitter test drawing, then for each method the maps of its two labels "
              "(red: strongest): " + ", ".join(r["explain"]) + ". Difference: the mean absolute "
              "difference between the two labels' maps (0: one map for both).", "",
              "| drawing | method | labels (probability) | difference |", "|---|---|---|---|"]
    for x in r["explain_figure"]:
        labels = ", ".join(f"{k} ({v:.3f})" for k, v in x["labels"].items())
        lines.append(f"| {x['emoji']} | {x['method']} | {labels} | {x['difference']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
