"""``mlic demo``: the whole loop on a small real dataset, in minutes on a CPU.

1. builds the emoji benchmark (emoji drawings tagged with Unicode CLDR keywords, from pinned npm
   packages) and takes its held-out-drawing-style protocol: train on Google, Apple and Facebook
   drawings (85% of them; the other 15% are the validation split), test on Twitter's, 159 labels;
2. fine-tunes EfficientNet-Lite0 from the offline ImageNet weights with the recipe in
   ``mlic/configs/demo_emoji.yaml``, selecting the weights on the validation split;
3. training ends by choosing the model's decision rule on the validation split (per-class
   thresholds, at least one label per image) and evaluating on the test drawings; the demo shows
   that evaluation and predicts a few drawings;
4. prints where everything is.
"""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from mlic.config import load_config
from mlic.data.emoji import build_emoji_benchmark
from mlic.data.formats.csv_table import load_csv
from mlic.engine import train
from mlic.inference import Predictor

# A plain timm + BCE + AdamW loop reaches 0.585-0.605 on this protocol (two runs of 8 epochs, see
# the README, "The demo"): the bar to beat.
BASELINE_MAP = (0.585, 0.605)


def demo_config_path() -> Path:
    return Path(str(resources.files("mlic") / "configs" / "demo_emoji.yaml"))


def run_demo(out: str | Path = "demo", epochs: int | None = None, progress: bool = True,
             packages_dir: str | Path | None = None, min_emoji_per_label: int = 10) -> Path:
    """Run the demo into ``out``; returns the run folder. ``packages_dir``: pre-fetched tarballs."""
    out = Path(out)
    started = time.time()
    print("1/4 building the emoji benchmark (npm packages, cached after the first run)")
    data_dir = out / "emoji"
    build_emoji_benchmark(data_dir, min_emoji_per_label=min_emoji_per_label,
                          packages_dir=packages_dir, progress=progress)
    overrides = [f"data.train={data_dir / 'style_fit.csv'}",
                 f"data.val={data_dir / 'style_val.csv'}",
                 f"data.test={data_dir / 'style_test.csv'}",
                 f"data.classes={data_dir / 'labels.txt'}",
                 f"output_dir={out / 'runs'}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    config = load_config(demo_config_path(), overrides)
    print(f"2/4 training {config['model']['backbone']} for {config['train']['epochs']} epochs "
          f"at {config['data']['image_size']} px ({time.time() - started:.0f}s so far)")
    run = train(config, progress=progress)

    print("3/4 decisions tuned on the validation split; test split (Twitter drawings, never seen "
          "in training):")
    report = json.loads((run / "eval_test.json").read_text(encoding="utf-8"))
    verdict = "beats" if report["mAP"] > BASELINE_MAP[1] else "does not beat"
    print(f"    test mAP {100 * report['mAP']:.2f}: {verdict} the plain-loop baseline "
          f"({100 * BASELINE_MAP[0]:.1f}-{100 * BASELINE_MAP[1]:.1f})")
    decisions = report["decisions"]
    print(f"    decisions ({decisions['rule']}): CF1 {100 * decisions['CF1']:.2f}, OF1 "
          f"{100 * decisions['OF1']:.2f}, {decisions['labels_per_image']:.2f} labels per image "
          f"(true {decisions['true_labels_per_image']:.2f})")

    print("4/4 predictions on a few test drawings:")
    predictor = Predictor.load(run)
    test = load_csv(data_dir / "style_test.csv", classes=data_dir / "labels.txt")
    truth = {str(test.image_path(i)): test.labels_of(i) for i in range(len(test))}
    examples = ["1F436", "1F355", "1F1EB-1F1F7", "1F913", "2764"]  # dog, pizza, France, nerd, heart
    paths = [p for p in (data_dir / "images" / "twitter" / f"{h}.png" for h in examples) if p.is_file()]
    for result in predictor.predict(paths):
        top = ", ".join(f"{name} {score:.2f}" for name, score in list(result["scores"].items())[:5])
        print(f"    {Path(result['image']).name:<18} true:      {', '.join(truth.get(result['image'], []))}"
              f"\n    {'':<18} predicted: {', '.join(result['labels']) or '-'}"
              f"\n    {'':<18} top-5:     {top}")

    print(f"\ndone in {time.time() - started:.0f}s. Where things are:\n"
          f"    data        {data_dir}  (images, style_*.csv and emoji_*.csv protocols)\n"
          f"    run         {run}\n"
          f"    config      {run / 'config.yaml'}   (repeat with: mlic train --config ...)\n"
          f"    metrics     {run / 'metrics.csv'}, {run / 'eval_test.json'}\n"
          f"    report      {run / 'report.html'}   (summary, curves, per-class AP)\n"
          f"    weights     {run / 'checkpoints' / 'best.safetensors'} (+ best.json)\n"
          f"next: mlic eval {run}   |   mlic predict {run} some.png   |   mlic data stats "
          f"{data_dir / 'style_train.csv'}")
    return run
