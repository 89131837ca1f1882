"""The ``mlic`` command. Each sub-command is a thin layer over the Python API.

Errors that are the user's to fix (``MlicError``) print one clear message and exit with status 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from pathlib import Path


def split_spec(path: str, fmt: str | None, options: list[str] | None) -> dict:
    """A data split spec from --data/--format/--option key=value arguments."""
    spec = {"path": path, **({"format": fmt} if fmt else {})}
    for option in options or []:
        key, _, value = option.partition("=")
        spec[key] = value
    return spec


def _train(args: argparse.Namespace) -> None:
    from mlic.engine import train
    if args.resume is None and args.config is None and not args.overrides:
        raise SystemExit("mlic train: give --config FILE and/or key=value overrides, or --resume RUN")
    train(args.config, args.overrides, resume=args.resume, progress=not args.no_progress)


def _eval(args: argparse.Namespace) -> None:
    from mlic.engine.evaluate import format_report
    from mlic.evaluation import evaluate
    output = writable_output(args.output)
    data = split_spec(args.data, args.format, args.option) if args.data else None
    thresholds = args.threshold if args.threshold is not None else 0.5
    report = evaluate(args.run, data, split=args.split, thresholds=thresholds,
                      empty_classes=args.empty_classes, batch_size=args.batch_size,
                      device=args.device, num_workers=args.num_workers, tag=args.tag,
                      progress=not args.no_progress, known_fraction=args.known_fraction,
                      name=args.name, allow_label_subset=args.allow_label_subset,
                      backend=args.backend)
    labels = report["labels"]
    if labels["not_in_model"] or labels["not_in_data"]:
        print(_label_note(labels), file=sys.stderr)
    text = json.dumps(report, indent=2) if args.json else format_report(report,
                                                                       per_class=args.per_class)
    if not args.json:
        d = report["decisions"]
        text += (f"\nthe model's decisions ({d['rule']}, as predict makes them): "
                 f"{d['labels_per_image']:.2f} labels per image (true {d['true_labels_per_image']:.2f}), "
                 f"CF1 {100 * d['CF1']:.2f}  OF1 {100 * d['OF1']:.2f}, "
                 f"{100 * d['empty_images']:.1f}% of images without a label")
    print(text)
    if output is not None:
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for path in filter(None, (report.get("written"), output)):
        print(f"written: {path}", file=sys.stderr if args.json else sys.stdout)


def _label_note(labels: dict) -> str:
    """What the label alignment found, in one line for standard error."""
    text = (f"mlic eval: {labels['matched']} of the data's {labels['data_labels']} label names "
            f"are among the model's {labels['model_labels']}")
    if labels["not_in_model"]:
        names = labels["not_in_model"]
        near = labels["near_matches"]
        text += "; not scored: " + ", ".join(
            f"{n!r}" + (f" (-> {near[n]})" if n in near else "") for n in names[:5]) + \
            (f" and {len(names) - 5} more" if len(names) > 5 else "")
    if labels["not_in_data"]:
        text += (f"; {len(labels['not_in_data'])} of the model's labels do not occur in the data "
                 f"(negative for every image, left out of mAP)")
    return text


def parse_known(items: list[str] | None) -> dict[str, str] | None:
    """--known dog=1,cat=0 (repeatable) -> {"dog": "1", "cat": "0"}; a label may contain spaces."""
    from mlic.errors import DataError
    if not items:
        return None
    known = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            name, sep, value = pair.rpartition("=")
            if not sep or not name.strip():
                raise DataError(f"--known {item!r}: expected label=1 or label=0 pairs, "
                                f"separated by commas")
            known[name.strip()] = value.strip()
    return known


def writable_output(path: str | None) -> Path | None:
    """``--output`` checked before any work: a file that can be created in an existing folder."""
    import tempfile

    from mlic.errors import DataError
    if path is None:
        return None
    out = Path(path)
    if out.is_dir():
        raise DataError("--output is a folder; give a file name", out)
    if not out.parent.is_dir():
        raise DataError("--output: its folder does not exist", out)
    try:  # the one sure test: make a file there (removed at once)
        fd, probe = tempfile.mkstemp(prefix=".tmp-", dir=out.parent)
    except OSError as e:
        raise DataError(f"--output: cannot write in its folder ({e.strerror})", out) from None
    os.close(fd)
    os.remove(probe)
    return out


def write_predictions(out, results: list[dict], label_names: list[str], fmt: str, top: int) -> None:
    from mlic.spreadsheet import safe_row
    if fmt == "json":
        for r in results:
            r["scores"] = dict(list(r["scores"].items())[:top]) if top else r["scores"]
        json.dump(results, out, indent=2)
        out.write("\n")
    else:  # cells escaped: a label name from a model's metadata must not become a formula
        writer = csv.writer(out)
        writer.writerow(safe_row(["image", "labels", *label_names]))
        for r in results:
            writer.writerow(safe_row([r["image"], "|".join(r["labels"]),
                                      *(f"{r['scores'][n]:.6f}" for n in label_names)]))


def _predict(args: argparse.Namespace) -> None:
    from mlic.atomic import atomic_write
    from mlic.errors import DataError
    from mlic.inference import ImageSkipped, KnownLabelsIgnored, Predictor, expand_image_paths
    output = writable_output(args.output)
    images = expand_image_paths(args.images)
    predictor = Predictor.load(args.run, backend=args.backend, device=args.device, tag=args.tag,
                               precision=None if args.precision == "default" else args.precision)
    predictor.max_pixels = args.max_image_pixels
    if args.threshold is not None:
        predictor.thresholds[:] = args.threshold
    if args.min_labels is not None:
        predictor.min_labels = args.min_labels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", KnownLabelsIgnored)
        warnings.simplefilter("always", ImageSkipped)
        results = predictor.predict(images, batch_size=args.batch_size,
                                    known=parse_known(args.known), on_bad=args.on_bad_image,
                                    progress=not args.no_progress and sys.stderr.isatty())
    skipped = [str(w.message) for w in caught if issubclass(w.category, ImageSkipped)]
    for warning in caught:
        if not issubclass(warning.category, ImageSkipped):
            print(f"mlic predict: warning: {warning.message}", file=sys.stderr)
    if skipped:
        print(f"mlic predict: skipped {len(skipped)} of {len(images)} images that cannot be read:",
              file=sys.stderr)
        print("\n".join(f"  {line}" for line in skipped), file=sys.stderr)
    if output is None:
        write_predictions(sys.stdout, results, predictor.label_names, args.format, args.top)
        return

    def write(temp: str) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as f:
            write_predictions(f, results, predictor.label_names, args.format, args.top)
    try:  # all or nothing: a full disk never leaves half a file over an earlier one
        atomic_write(output, write)
    except OSError as e:
        raise DataError(f"cannot write the predictions ({e.strerror})", output) from None
    print(f"{len(results)} predictions written to {output}", file=sys.stderr)


def _export(args: argparse.Namespace) -> None:
    from mlic.export import export_model
    path = export_model(args.run, args.format, out=args.out, int8=args.int8,
                        logits=not args.no_logits, tag=args.tag,
                        calibration_data=args.calibration_data,
                        calibration_size=args.calibration_size,
                        overflow_fix=args.overflow_fix.replace("-", "_"),
                        max_drop=args.max_drop, validation_data=args.validation_data,
                        validation_size=args.validation_size)
    outputs = "probabilities (sigmoid inside the graph)" + ("" if args.no_logits else " and logits")
    print(f"written: {path}  ({'INT8' if args.int8 else 'FP32'}, dynamic batch; outputs: {outputs}; "
          f"label names, thresholds and preprocessing in its metadata)")
    if args.int8:
        from mlic.export.runtime import read_metadata
        calibration = read_metadata(path)["export"]["calibration"]
        bits = "7-bit weights everywhere" if calibration["overflow_fix"] == "all" else \
            "8-bit weights: exact on CPUs with VNNI or AMX"
        print(f"calibrated on {calibration['images']} images; overflow fix "
              f"{calibration['overflow_fix']} ({bits})")
        control = calibration.get("accuracy_control")
        if control:
            print(f"accuracy control on {control['validation_images']} validation images: mAP "
                  f"{control['fp32_map']:.2f} FP32, {control['int8_map']:.2f} INT8 (max drop "
                  f"{control['max_drop_map']:g}); {control['quantized_inputs']} quantized inputs kept")


def _bench(args: argparse.Namespace) -> None:
    from mlic.export.bench import bench_model, format_results
    results = bench_model(args.model, args.backend, batch_size=args.batch_size, warmup=args.warmup,
                          repeats=args.repeats, threads=args.threads, tag=args.tag)
    text = json.dumps([r.as_dict() for r in results], indent=2) + "\n"
    print(text, end="") if args.json == "-" else print(format_results(results))
    output = args.output or (args.json if args.json not in (None, "-") else None)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(f"written: {output}", file=sys.stderr)


def _data_stats(args: argparse.Namespace) -> None:
    from mlic.data.formats import load_table
    from mlic.data.stats import describe
    spec = split_spec(args.dataset, args.format, args.option)
    print(describe(load_table(spec), top=args.top))


def _data_emoji(args: argparse.Namespace) -> None:
    from mlic.data.emoji import build_emoji_benchmark
    info = build_emoji_benchmark(args.out, min_emoji_per_label=args.min_emoji,
                                 packages_dir=args.packages)
    print(json.dumps({k: v for k, v in info.items() if k != "label_frequencies"}, indent=2))


def _tune_thresholds(args: argparse.Namespace) -> None:
    from mlic.thresholds import tune_run_thresholds
    data = split_spec(args.data, args.format, args.option) if args.data else None
    summary = tune_run_thresholds(args.run, split=args.split, data=data,
                                  batch_size=args.batch_size, device=args.device,
                                  num_workers=args.num_workers, progress=not args.no_progress,
                                  min_labels=args.min_labels, min_positives=args.min_positives)
    print(f"tuned {len(summary['thresholds'])} thresholds on {summary['num_images']} images of "
          f"{summary['split']} (clean pass, no augmentation); rule: {summary['rule']}")
    if summary["fallback_labels"]:
        print(f"  {len(summary['fallback_labels'])} labels with fewer than "
              f"{summary['min_positives']} positives there take the global threshold "
              f"{summary['global_threshold']:.3f}")
    if summary["on_training_images"]:
        print("  warning: tuned on the images the model was trained on; expect fewer labels, and "
              "more images with none, on new images", file=sys.stderr)
    names = {"at_0.5": "0.5", "global": f"global {summary['global_threshold']:.3f}",
             "tuned": "tuned (the model's rule now)"}
    print(f"  {'rule':<30} {'labels/image':>12} {'CF1':>6} {'OF1':>6} {'no label':>9}")
    for key, m in summary["on_tuning_split"].items():
        print(f"  {names[key]:<30} {m['labels_per_image']:12.2f} {100 * m['CF1']:6.2f} "
              f"{100 * m['OF1']:6.2f} {100 * m['empty_images']:8.1f}%")
    print(f"written: {Path(args.run) / 'thresholds.json'} and the model's best.json "
          f"(used by predict and export, reported by eval)")


def _flops(args: argparse.Namespace) -> None:
    import yaml

    from mlic.flops import cost_of, format_cost
    params = {}
    for item in args.head_param or []:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    print(format_cost(cost_of(args.backbone, args.head, args.classes, args.size, params)))


def _demo(args: argparse.Namespace) -> None:
    from mlic.demo import run_demo
    run_demo(args.out, epochs=args.epochs, progress=not args.no_progress)


def _lr_find(args: argparse.Namespace) -> None:
    from mlic.engine.lr_finder import lr_find
    search, folder = lr_find(args.config, args.overrides, method=args.method, out=args.out,
                             progress=not args.no_progress)
    print(search.table())
    print(f"lr: {search.lr:.3g}  ({search.method}, {search.seconds:.0f}s; weights untouched)")
    written = [folder / "lr_find.json"] + ([folder / "lr_find.png"]
                                           if (folder / "lr_find.png").exists() else [])
    print(f"written: {', '.join(str(p) for p in written)}")


def _tune(args: argparse.Namespace) -> None:
    from mlic.tune import tune
    tune(args.config, args.overrides, out=args.out, n_trials=args.trials, timeout=args.timeout,
         resume=args.resume, min_lr=args.min_lr, max_lr=args.max_lr, progress=not args.no_progress)


def _report(args: argparse.Namespace) -> None:
    from mlic.gallery import chosen_labels
    from mlic.report import write_report
    print(f"written: {write_report(args.run, chosen_labels(args.labels))}")


def _explain(args: argparse.Namespace) -> None:
    from mlic.explain import explain_examples, output_folder
    from mlic.inference import expand_image_paths
    from mlic.report import teaching_examples, write_report_or_warn
    labels = [n.strip() for n in args.labels.split(",") if n.strip()] if args.labels else None
    out = output_folder(args.run, args.out)
    if args.images:
        examples = [(path, labels) for path in expand_image_paths(args.images)]
    else:  # the report gallery's worst images and weak labels' errors, with their labels
        examples = teaching_examples(args.run, labels or ())
    entries = explain_examples(args.run, examples, out, method=args.method, tag=args.tag,
                               device=args.device)
    print(f"written: {len(entries)} maps in {out} (listed in {out / 'index.json'})")
    if not args.out:  # the run's own explain/ folder: its report shows the maps
        write_report_or_warn(args.run)


def build_parser() -> argparse.ArgumentParser:
    from mlic.version import __version__
    parser = argparse.ArgumentParser(prog="mlic", description="Multi-label image classification.")
    parser.add_argument("--version", action="version", version=f"mlic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config and key=value overrides")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--resume", metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=0.001")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="mAP, CP/CR/CF1, OP/OR/OF1 and per-class AP of a trained or "
                       "exported model")
    p.add_argument("run", help="run folder, checkpoint, or exported .onnx / .xml (FP32 or INT8)")
    p.add_argument("--data", help="annotations to evaluate on (default: the run's test split)")
    p.add_argument("--format", help="annotation format of --data (default: detected)")
    p.add_argument("--option", action="append", help="format option key=value, e.g. split=test")
    p.add_argument("--split", help="which of the run's own splits (test or val; default test, "
                   "else val)")
    p.add_argument("--name", help="name of an evaluation of --data: RUN/eval_NAME.json (default: "
                   "the data file's name; never overwrites another data's evaluation)")
    p.add_argument("--allow-label-subset", action="store_true", help="score the labels the data "
                   "and the model share even when fewer than half of the data's match")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"],
                   help="default: torch for runs, onnxruntime for .onnx, openvino for .xml")
    p.add_argument("--tag", default="best", help="checkpoint of the run (best or last)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--output", "-o", help="also write the report (JSON) to this file")
    p.add_argument("--threshold", type=float, help="threshold of the main columns (default 0.5); "
                   "tuned per-class thresholds, if the model has them, are reported beside")
    p.add_argument("--empty-classes", choices=["skip", "zero"], default="skip",
                   help="classes without positives: left out of mAP (default) or counted as 0")
    p.add_argument("--known-fraction", type=float, default=0.0,
                   help="partial-label protocol: this share of each image's labels is known (the "
                        "same set for every model; given to C-Tran), metrics over the rest only")
    p.add_argument("--per-class", type=int, default=10, help="best/worst classes to list")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="labels and scores for images, folders or globs")
    p.add_argument("run", help="run folder, checkpoint, or exported .onnx / .xml")
    p.add_argument("images", nargs="+")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"],
                   help="default: torch for runs and checkpoints, onnxruntime for .onnx, openvino "
                        "for .xml (runs are exported on the fly for the other two)")
    p.add_argument("--precision", choices=["default", "f32"], default="default",
                   help="OpenVINO only: its default (bf16 on CPUs that have it) or f32")
    p.add_argument("--known", action="append", metavar="LABEL=1,LABEL=0",
                   help="labels known for every image (1 present, 0 absent); used by heads with "
                        "label states (ctran), ignored with a warning by the others")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--output", "-o", help="file to write (default: standard output)")
    p.add_argument("--threshold", type=float, help="one threshold for every label instead of "
                   "the model's (its tuned ones, else 0.5)")
    p.add_argument("--min-labels", type=int, help="labels every image gets at least, its "
                   "best-scoring ones (default: the model's, 1); 0: an image may get none")
    p.add_argument("--top", type=int, default=10, help="scores to list per image in JSON (0: all)")
    p.add_argument("--on-bad-image", choices=["error", "skip"], default="error",
                   help="an image that cannot be read: stop (default), or leave it out and list it")
    p.add_argument("--max-image-pixels", type=int, default=128_000_000,
                   help="larger images are refused from their header (decompression bombs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="torch: auto (a GPU if there is one), cpu, "
                   "cuda, ...")
    p.add_argument("--tag", default="best", help="checkpoint of the run (best or last)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="ONNX or OpenVINO IR (FP32, or INT8 with NNCF) with the label "
                       "names, thresholds and preprocessing inside")
    p.add_argument("run", help="run folder or checkpoint")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx")
    p.add_argument("--int8", action="store_true", help="NNCF post-training quantization, "
                   "calibrated on a subset of the run's training images")
    p.add_argument("--output", "-o", "--out", dest="out",
                   help="folder (default RUN/export) or file name (.onnx / .xml)")
    p.add_argument("--no-logits", action="store_true", help="output probabilities only")
    p.add_argument("--tag", default="best", help="checkpoint of the run (best or last)")
    p.add_argument("--calibration-data", help="annotations of the calibration images "
                   "(default: the run's training split)")
    p.add_argument("--calibration-size", type=int, default=300)
    p.add_argument("--overflow-fix", choices=["auto", "all", "first-layer", "none"], default="auto",
                   help="INT8 layers whose weights get 7 bits, so that CPUs without VNNI (AVX2) do "
                   "not saturate: all (exact on any CPU), first-layer (NNCF's default: 8-bit "
                   "weights, for CPUs with VNNI or AMX); auto: first-layer if this CPU has VNNI "
                   "or AMX, else all")
    p.add_argument("--max-drop", type=float, help="INT8 with accuracy control: layers go back to "
                   "floating point until the validation mAP is at most this many points below FP32")
    p.add_argument("--validation-data", help="labelled images for --max-drop (default: the run's "
                   "validation split; not its test split, whose score would then be optimistic)")
    p.add_argument("--validation-size", type=int, default=500)
    p.set_defaults(func=_export)

    p = sub.add_parser("bench", help="latency (batch 1, p50/p90) and throughput per backend")
    p.add_argument("model", help="run folder, checkpoint, or exported .onnx / .xml")
    p.add_argument("--backend", nargs="+", choices=["torch", "onnxruntime", "openvino"],
                   help="default: every backend that can run MODEL")
    p.add_argument("--batch-size", type=int, default=16, help="batch of the throughput test")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30, help="timed batch-1 calls")
    p.add_argument("--threads", type=int, help="threads per backend (default: each one's own)")
    p.add_argument("--tag", default="best")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="print the results as "
                   "JSON (with FILE: write them there, as --output)")
    p.add_argument("--output", "-o", help="also write the results (JSON) to this file")
    p.set_defaults(func=_bench)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command",
                                                                       required=True)
    p = data.add_parser("stats", help="images, labels per image, frequencies, co-occurrence")
    p.add_argument("dataset", help="annotation file or dataset folder")
    p.add_argument("--format", help="annotation format (default: detected)")
    p.add_argument("--option", action="append", help="format option key=value, e.g. split=test")
    p.add_argument("--top", type=int, default=20)
    p.set_defaults(func=_data_stats)
    p = data.add_parser("emoji", help="build the emoji benchmark from pinned npm packages")
    p.add_argument("--output", "-o", "--out", dest="out", default="data/emoji",
                   help="folder of the benchmark (default data/emoji)")
    p.add_argument("--min-emoji", type=int, default=10, help="keep a tag carried by >= this many emoji")
    p.add_argument("--packages", help="folder of pre-fetched npm tarballs (default: npm pack)")
    p.set_defaults(func=_data_emoji)

    p = sub.add_parser("tune-thresholds", help="the model's decision rule: per-class F1-optimal "
                       "thresholds from held-out images, stored with the model")
    p.add_argument("run", help="run folder")
    p.add_argument("--split", help="split of the run's config to tune on (default: val; train "
                   "fits the images the model memorised)")
    p.add_argument("--data", help="annotations to tune on instead of a split of the run")
    p.add_argument("--format", help="annotation format of --data (default: detected)")
    p.add_argument("--option", action="append", help="format option key=value, e.g. split=val")
    p.add_argument("--min-labels", type=int, default=1, help="labels every image gets at least "
                   "(its best-scoring ones); 0: an image may get none (default 1)")
    p.add_argument("--min-positives", type=int, default=20, help="labels with fewer positives in "
                   "the tuning data take the one global threshold (default 20)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_tune_thresholds)

    p = sub.add_parser("flops", help="GFLOPs (multiply-accumulates) and parameters of a model")
    p.add_argument("--backbone", required=True, help="timm model name")
    p.add_argument("--head", default="linear")
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--size", type=int, default=448, help="input side in pixels")
    p.add_argument("--head-param", action="append", help="head parameter key=value (repeatable)")
    p.set_defaults(func=_flops)

    p = sub.add_parser("demo", help="build the emoji benchmark, train, evaluate and predict")
    p.add_argument("--output", "-o", "--out", dest="out", default="demo",
                   help="folder for the data and the run (default demo)")
    p.add_argument("--epochs", type=int, default=None, help="default: the demo recipe's")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo)

    p = sub.add_parser("lr-find", help="estimate the initial learning rate (a dry run: weights "
                       "untouched); writes lr_find.json and lr_find.png")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lr_finder.steps=200")
    p.add_argument("--method", choices=["range", "trials"], help="default: the config's lr_finder.method")
    p.add_argument("--output", "-o", "--out", dest="out",
                   help="folder for the results (default: a new folder in output_dir)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_lr_find)

    p = sub.add_parser("tune", help="Optuna search over lr, loss scale, cutout and pooling; "
                       "each trial a training run")
    p.add_argument("--config", help="YAML config (with --resume: default the study's base config)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5")
    p.add_argument("--trials", type=int, help="number of trials (this session)")
    p.add_argument("--timeout", type=float, help="seconds for this session's trials")
    p.add_argument("--output", "-o", "--out", dest="out", required=True, help="folder of the study (study.db, trials/, "
                   "trials.csv, best_config.yaml)")
    p.add_argument("--resume", action="store_true", help="add trials to the study in --out")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--max-lr", type=float, default=0.1)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_tune)

    p = sub.add_parser("report", help="write RUN/report.html (summary, curves, every evaluation, "
                       "per-class AP, thresholds, PR/F1 curves, image gallery, co-occurrence and "
                       "confusions; one self-contained file) and RUN/plots/*.png")
    p.add_argument("run", help="run folder")
    p.add_argument("--labels", help="comma-separated label names to show in the gallery and the "
                   "curves, besides the weakest and strongest")
    p.set_defaults(func=_report)

    p = sub.add_parser("explain", help="per-label maps of where in each image a label comes from "
                       "(Recipro-CAM, or the label query's attention for decoder heads), as PNG "
                       "overlays")
    p.add_argument("run", help="run folder or checkpoint")
    p.add_argument("images", nargs="*", help="images, folders or globs (default: the images of "
                   "the run report's gallery, each with the labels it got wrong)")
    p.add_argument("--labels", help="comma-separated label names (default: the labels the model "
                   "predicts for each image, or its most probable one); with no images, labels "
                   "whose errors to add")
    p.add_argument("--output", "-o", "--out", dest="out",
                   help="output folder (default: RUN/explain, shown in RUN/report.html)")
    p.add_argument("--method", choices=["auto", "recipro_cam", "attention"], default="auto",
                   help="auto: attention for decoder heads (ml_decoder, query2label, ctran), "
                        "Recipro-CAM for the others")
    p.add_argument("--tag", default="best", help="checkpoint of the run (best or last)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mlic.errors import MlicError
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options (`mlic train --config c.yaml a=1 --no-progress b=2`).
    if extra and args.command in ("train", "lr-find", "tune") and all(
            "=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except MlicError as e:
        print(f"mlic {args.command}: error: {clean_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlic {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def clean_message(error: Exception) -> str:
    """The user's part of an error; DataLoader workers wrap errors in a traceback text."""
    text = str(error)
    marker = "Original Traceback (most recent call last):"
    if marker in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text
