"""The run report: ``<run>/report.html``, one page that says what a run was and how it went.

A run folder holds everything about a run, but as numbers spread over files (config.yaml,
metrics.csv, eval_*.json, checkpoints/best.json, thresholds.json). The report puts them on one
page a person can read or send: what was trained, the training curves, the metrics of the
selected weights on each evaluated split, the weakest and strongest labels, the tuned thresholds.
It reads only the folder's files (no model, no data), so it is cheap to rewrite: training writes
it at the end, ``mlic eval`` and ``mlic tune-thresholds`` refresh it, ``mlic report RUN`` on demand.
There a failure costs a warning, never the run or the evaluation (``write_report_or_warn``).

The page is one self-contained file (figures as base64 PNGs, inline CSS, no JavaScript, nothing
fetched), so it opens the same from a laptop, a mail or an artifact store; the figures are also
saved as ``<run>/plots/*.png``. A section whose inputs are missing says what is missing. Every
string read from a file is HTML-escaped. Metrics are stored as fractions and shown as percentages
with two decimals, as ``mlic eval`` prints them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from mlic.atomic import atomic_write
from mlic.cooccurrence import confusions_table, cooccurrence_section, training_pairs
from mlic.errors import ConfigError
from mlic.figures import e as _e, figure as _figure, img as _img, missing as _missing
from mlic.figures import pct as _pct, png as _png
from mlic.gallery import (CSS as GALLERY_CSS, choose, examples, explained, explanations,
                          gallery)
from mlic.label_curves import curves_figure, drawn_labels
from mlic.predictions import load_predictions, predictions_file
from mlic.run_folder import checkpoints_of, is_run_folder, read_metrics

METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "mean_F1")
PLOTS = ("training_curves", "per_class_ap", "ap_vs_positives", "thresholds", "label_curves",
         "cooccurrence")
PAIRS_CACHE = "label_pairs.npz"  # the training labels' pair counts, computed once per table
BARS, TABLE_ROWS = 20, 15  # labels shown at each end of the per-class chart / table

CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%}.missing{color:#777;font-style:italic}.pair{display:flex;gap:2em;flex-wrap:wrap}
h3{font-size:1em;margin:1.2em 0 .3em}
""" + GALLERY_CSS


def write_report(run_dir: str | Path, labels: Sequence[str] = ()) -> Path:
    """Write ``<run>/report.html`` and ``<run>/plots/*.png``; returns the HTML file's path.
    ``labels``: label names to show in the gallery and the curves besides the weakest ones."""
    run = Path(run_dir)
    if not run.is_dir() or not is_run_folder(run):
        raise ConfigError(f"{run}: not a run folder (no config.yaml or checkpoints/best.json)")
    files = _RunFiles(run)
    plots: dict[str, bytes] = {}
    body = "".join([_summary(files), _curves(files, plots), _evaluation(files),
                    _per_class(files, plots), _thresholds(files, plots),
                    _label_curves(files, plots, labels), _gallery(files, labels),
                    _labels_together(files, plots)])
    (run / "plots").mkdir(exist_ok=True)
    for name in PLOTS:  # a figure whose inputs are gone goes too: plots/ matches the page
        path = run / "plots" / f"{name}.png"
        if name in plots:
            atomic_write(path, lambda temp, data=plots[name]: Path(temp).write_bytes(data))
        else:
            path.unlink(missing_ok=True)
    notes = "".join(f'<p class="missing">{_e(n)}</p>' for n in files.notes)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>mlic report: {_e(run.name)}</title><style>{CSS}</style></head><body>"
            f"<h1>Training run {_e(run.name)}</h1><p>{_e(run.resolve())}</p>{notes}{body}"
            f"</body></html>\n")
    out = run / "report.html"
    atomic_write(out, lambda temp: Path(temp).write_text(page, encoding="utf-8"))
    return out


def write_report_or_warn(run_dir: str | Path, log: logging.Logger | None = None) -> Path | None:
    """``write_report`` where a report is a by-product (after training, eval, tune-thresholds): a
    folder that is not a run is skipped, and a failure is one warning line, never an error."""
    if not is_run_folder(run_dir):
        return None
    try:
        return write_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the run or evaluation matters more than its report
        message = (str(e).splitlines() or [""])[0]
        (log or logging.getLogger(__name__)).warning(
            f"warning: {Path(run_dir) / 'report.html'} not written: {type(e).__name__}: {message}")
        return None


# ------------------------------------------------------------------------------------ inputs
class _RunFiles:
    """What the run folder holds; a file that cannot be read is noted and treated as missing."""

    def __init__(self, run: Path):
        self.run, self.notes = run, []
        self.config = self._read(run / "config.yaml") or {}
        self.meta = self._read(checkpoints_of(run) / "best.json") or {}
        self.tuning = self._read(run / "thresholds.json")
        self.rows = read_metrics(run)
        order = {"test": 0, "val": 1}
        paths = sorted(run.glob("eval_*.json"), key=lambda p: (order.get(p.stem[5:], 2), p.stem))
        self.evals = {p.stem[5:]: r for p in paths if (r := self._read(p))}
        # train.lr=auto writes lr_finder.json/.png into the run; `mlic lr-find --out RUN`, lr_find.*
        self.lr_file = next((p for p in (run / "lr_finder.json", run / "lr_find.json")
                             if p.is_file()), None)
        self.lr_search = self._read(self.lr_file) if self.lr_file else None

    def _read(self, path: Path) -> dict[str, Any] | None:
        """A JSON or YAML mapping; None when the file is absent, unreadable or not a mapping."""
        if not path.is_file():
            return None
        try:
            text = path.read_text(encoding="utf-8")
            value = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
        except (OSError, ValueError, yaml.YAMLError) as e:
            value = e
        if isinstance(value, dict):
            return value
        reason = value if isinstance(value, Exception) else "not a mapping"
        self.notes.append(f"{path.name} could not be read and is left out: {reason}")
        return None

    def section(self, *keys: str) -> Any:
        value: Any = self.config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def column(self, name: str) -> list[tuple[int, float]]:
        """(epoch, value) of a metrics.csv column, rows where it is empty left out."""
        points = []
        for row in self.rows:
            try:
                points.append((int(row["epoch"]), float(row[name])))
            except (KeyError, TypeError, ValueError):
                continue
        return points

    def predictions(self, name: str, labels: int):
        """The saved scores of evaluation ``name`` (``mlic.predictions``), None if absent or not
        of the model's ``labels`` labels."""
        path = predictions_file(self.run, name)
        if not path.is_file():
            return None
        try:
            found = load_predictions(path)
        except (OSError, ValueError, KeyError) as error:
            self.notes.append(f"{path.name} could not be read and is left out: {error}")
            return None
        return found if found.probabilities.shape[1] == labels else None

    def thresholds(self, labels: int) -> np.ndarray:
        """The model's thresholds, one per label: tuned ones, else its single threshold."""
        value = self.meta.get("thresholds", 0.5)
        if isinstance(value, list) and len(value) == labels:
            return np.asarray(value, dtype=np.float32)
        try:
            return np.full(labels, float(value), dtype=np.float32)
        except (TypeError, ValueError):
            return np.full(labels, 0.5, dtype=np.float32)

    def min_labels(self) -> int:
        """The model's floor on labels per image (``mlic.decisions``; 1 when not stored)."""
        value = self.meta.get("min_labels", 1)
        return value if isinstance(value, int) and value >= 0 else 1

    def main_eval(self) -> tuple[str, dict[str, Any]] | None:
        """The first evaluation with per-class AP of all labels (test, else val; not ``_known``)."""
        return next(((name, r) for name, r in self.evals.items()
                     if r.get("per_class") and not r.get("known_fraction")), None)


# ---------------------------------------------------------------------------------- sections
def _summary(f: _RunFiles) -> str:
    model = f.meta.get("model") or f.section("model") or {}
    loss = f.section("loss") or {}
    train = f.section("train") or {}
    rows = [("backbone", model.get("backbone")), ("head", _with_params(model.get("head"),
                                                                        model.get("head_params")))]
    rows.append(("loss", _with_params(loss.get("name"), loss.get("params"))))
    size = f.section("data", "image_size") or (f.meta.get("preprocessing") or {}).get("image_size")
    rows.append(("image size", f"{size} px" if size else None))
    if train:
        rows.append(("optimisation", f"{train.get('optimizer')}, lr {train.get('lr')}, batch "
                     f"{train.get('batch_size')}, {train.get('scheduler')} schedule"
                     + (f", EMA {train['ema']}" if train.get("ema") else "")
                     + (", SAM" if train.get("sam") else "")))
    for split in ("train", "val", "test"):
        spec = f.section("data", split)
        rows.append((f"{split} data", spec.get("path") if isinstance(spec, dict) else spec))
    epochs = [e for e, _ in f.column("seconds")] or [e for e, _ in f.column("train_loss")]
    planned = train.get("epochs")
    rows.append(("epochs run / planned", f"{max(epochs) if epochs else '?'} / {planned or '?'}"))
    labels = f.meta.get("label_names")
    rows.append(("labels", len(labels) if labels else None))
    seconds = [s for _, s in f.column("seconds")]
    rows.append(("training time", _duration(sum(seconds)) + " (sum of metrics.csv seconds)"
                 if seconds else None))
    if f.meta.get("epoch") is not None:
        kind = "EMA" if f.meta.get("selected") == "ema" else "model"
        chosen = f"epoch {f.meta['epoch']}, {kind} weights"
        if f.meta.get("val_mAP") is not None:
            chosen += f", validation mAP {_pct(f.meta['val_mAP'])}"
        elif f.config and not f.section("data", "val"):
            chosen += " (no validation split to select on: the last epoch's)"
        rows.append(("selected weights", chosen))
    if f.lr_search:
        rows.append(("learning-rate search", f"lr {f.lr_search.get('lr')} "
                     f"({f.lr_search.get('method')} method; {f.lr_file.name})"))
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows if v is not None)
    missing = [n for n, have in (("config.yaml", f.config), ("checkpoints/best.json", f.meta),
                                 ("metrics.csv", f.rows)) if not have]
    note = _missing(f"Not in the run folder: {', '.join(missing)}.") if missing else ""
    return f"<h2>Summary</h2>{note}<table>{table}</table>"


def _curves(f: _RunFiles, plots: dict[str, bytes]) -> str:
    head = "<h2>Training curves</h2>"
    lr_png = f.lr_file.with_suffix(".png") if f.lr_file else None
    if lr_png and lr_png.is_file():  # the search's own figure, embedded as it is
        head += (f"<p>Learning-rate search ({_e(lr_png.name)}):</p>"
                 + _img(lr_png.read_bytes(), "learning-rate search"))
    if not f.rows:
        return head + _missing("No metrics.csv rows: no epoch has finished.")
    panels = [("training loss", {"train loss": f.column("train_loss")}, False)]
    val = {"model": f.column("val_mAP"), "EMA": f.column("val_mAP_ema")}
    val = {k: [(e, 100 * v) for e, v in pts] for k, pts in val.items() if pts}
    if val:
        panels.append(("validation mAP (%)", val, False))
    if f.column("lr"):
        panels.append(("learning rate (end of epoch)", {"lr": f.column("lr")}, True))
    fig, axes = _figure(4.3 * len(panels), 3.4, len(panels))
    for ax, (title, series, log_y) in zip(axes, panels):
        for name, points in series.items():
            ax.plot(*zip(*points), marker="o", markersize=3, label=name)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if len(series) > 1:
            ax.legend(fontsize=8)
    plots["training_curves"] = _png(fig)
    note = "" if val else _missing("No validation mAP in metrics.csv (the run has no validation "
                                   "split), so no validation curve.")
    return head + note + _img(plots["training_curves"], "training curves")


def _evaluation(f: _RunFiles) -> str:
    head = "<h2>Every evaluation of the run</h2>"
    if not f.evals:
        return head + _missing("No eval_*.json: the run has no test or validation split, or was "
                               "not evaluated yet (mlic eval RUN).")
    cells = "".join(f"<th>{k.replace('_', ' ')}</th>" for k in METRICS)
    rows = []
    for name, r in f.evals.items():
        split = name + (f" ({100 * float(r['known_fraction']):g}% of labels known)"
                        if r.get("known_fraction") else "")
        threshold = r.get("threshold", 0.5)
        tuned = r.get("tuned") and {"mAP": r.get("mAP"), **r["tuned"]}  # mAP has no threshold
        # What predict gives: the model's rule with its floor of labels per image.
        chosen = r.get("decisions") and {"mAP": r.get("mAP"), **r["decisions"]}
        rule = chosen and (f"{chosen.get('rule', '')}: {chosen.get('labels_per_image', 0):.2f} "
                           f"labels per image (true {chosen.get('true_labels_per_image', 0):.2f}), "
                           f"{_pct(chosen.get('empty_images'))}% without one")
        for label, at, metrics in ((split, threshold, r), (f"{split}, tuned", "per-class (tuned)",
                                                           tuned),
                                   (f"{split}, decisions", rule, chosen)):
            if not metrics:
                continue
            values = "".join(f'<td class="n">{_pct(metrics.get(k))}</td>' for k in METRICS)
            source = f' title="data: {_e(r["source"])}"' if r.get("source") else ""
            rows.append(f'<tr><td{source}>{_e(label)}</td><td>{_e(_model_of(r))}</td>'
                        f'<td class="n">{_e(r.get("num_images", ""))}</td><td>{_e(at)}</td>'
                        f'{values}</tr>')
    return (head + f"<table><tr><th>evaluation (eval_&lt;name&gt;.json)</th><th>model</th>"
            f"<th>images</th><th>threshold</th>{cells}</tr>{''.join(rows)}</table><p>One row "
            f"per evaluation: the run's splits, other data (mlic eval --data), the known-label "
            f"protocol, exported models (mlic eval MODEL.onnx / .xml); under each, the metrics at "
            f"the tuned thresholds and of the decisions as mlic predict makes them (at least "
            f"one label per image by default). Percentages. mAP does not depend on the threshold; "
            f"mean F1 is the mean of the per-class F1 (CF1 is the harmonic mean of CP and "
            f"CR).</p>")


def _model_of(report: dict[str, Any]) -> str:
    """What an evaluation scored: an exported file by its name, else the run's weights."""
    model = Path(str(report.get("model") or ""))
    return model.name if model.suffix.lower() in (".onnx", ".xml") else "selected weights"


def _per_class(f: _RunFiles, plots: dict[str, bytes]) -> str:
    main = f.main_eval()
    if main is None:
        return "<h2>Per-class AP</h2>" + _missing("No evaluation with per-class AP (eval_*.json).")
    name, report = main
    scored = sorted((r for r in report["per_class"] if r.get("AP") is not None),
                    key=lambda r: r["AP"])
    head = f"<h2>Per-class AP on {_e(name)} ({len(scored)} labels)</h2>"
    empty = report.get("empty_classes") or []
    note = (f"<p>Without positives in this split ({len(empty)}, not in the chart): "
            f"{_e(', '.join(map(str, empty)))}.</p>" if empty else "")
    if not scored:
        return head + note + _missing("No label has an AP in this evaluation.")
    cut = len(scored) > 2 * BARS  # then a gap between the lowest and the highest BARS
    shown = scored[:BARS] + scored[-BARS:] if cut else scored
    ys = [i + (cut and i >= BARS) for i in range(len(shown))]
    names = [str(r["label"])[:32] for r in shown]
    fig, (ax,) = _figure(7.5, 1.2 + 0.19 * len(shown), 1, left=0.3 + 0.065 * max(map(len, names)))
    ax.barh(ys, [100 * r["AP"] for r in shown],
            color=["C3" if i < len(shown) / 2 else "C0" for i in range(len(shown))])
    if cut:
        ax.axhline(BARS, color="0.6", linestyle=":", linewidth=1)
        ax.text(50, BARS, f"{len(scored) - 2 * BARS} labels between", ha="center", va="center",
                fontsize=7, color="0.4", backgroundcolor="white")
    ax.set_ylim(-0.7, ys[-1] + 0.7)
    ax.set_yticks(ys, names, fontsize=7)
    for tick in ax.get_yticklabels():
        tick.set_parse_math(False)  # a label with '$' is text, not a formula
    ax.axvline(100 * report["mAP"], color="0.3", linestyle="--", linewidth=1,
               label=f"mAP {_pct(report['mAP'])}")
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP (%)")
    ax.set_title("all labels, by AP" if not cut else
                 f"the {BARS} lowest and {BARS} highest AP of {len(scored)} labels")
    ax.legend(fontsize=8, loc="lower right")
    plots["per_class_ap"] = _png(fig)
    fig, (ax,) = _figure(6.4, 4.2, 1)
    ax.scatter([r["positives"] for r in scored], [100 * r["AP"] for r in scored], s=12, alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("positives in the split (log)")
    ax.set_ylabel("AP (%)")
    ax.set_title("AP against the number of positives")
    plots["ap_vs_positives"] = _png(fig)
    if len(scored) <= 2 * TABLE_ROWS:
        tables = _label_table("all labels, highest AP first", scored[::-1])
    else:
        tables = (_label_table(f"lowest {TABLE_ROWS}", scored[:TABLE_ROWS]) +
                  _label_table(f"highest {TABLE_ROWS}", scored[::-1][:TABLE_ROWS]))
    return (head + note + _img(plots["per_class_ap"], "per-class AP")
            + _img(plots["ap_vs_positives"], "AP against positives")
            + f'<div class="pair">{tables}</div>')


def _thresholds(f: _RunFiles, plots: dict[str, bytes]) -> str:
    head = "<h2>Decision thresholds</h2>"
    values = f.meta.get("thresholds")
    if not isinstance(values, list) and f.tuning and isinstance(f.tuning.get("thresholds"), dict):
        values = list(f.tuning["thresholds"].values())
    if not isinstance(values, list) or not values:
        at = f.meta.get("thresholds", 0.5)
        return head + _missing(f"No tuned per-class thresholds: every label is decided at {_e(at)} "
                               f"(mlic tune-thresholds RUN tunes them).")
    values = [float(v) for v in values]
    fig, (ax,) = _figure(6.4, 3.6, 1)
    ax.hist(values, bins=20, range=(0, 1), color="C2", edgecolor="white")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.axvline(0.5, color="0.3", linestyle="--", linewidth=1, label="0.5")
    ax.set_xlabel("threshold")
    ax.set_ylabel("labels")
    ax.set_title(f"tuned per-class thresholds ({len(values)} labels)")
    ax.legend(fontsize=8)
    plots["thresholds"] = _png(fig)
    text = (f"<p>Median {sorted(values)[len(values) // 2]:.3f}, range {min(values):.3f} to "
            f"{max(values):.3f}.")
    if f.tuning:
        text += f" Tuned on {_e(f.tuning.get('split'))} ({_e(f.tuning.get('num_images'))} images)"
        on = f.tuning.get("on_tuning_split") or {}
        if on.get("at_0.5") and on.get("tuned"):
            text += "; there: " + ", ".join(
                f"{k.replace('_', ' ')} {_pct(on['at_0.5'].get(k))} at 0.5, "
                f"{_pct(on['tuned'].get(k))} tuned" for k in ("CF1", "OF1", "mean_F1")
                if k in on["tuned"])
        if f.tuning.get("rule"):  # the decision rule predict follows (mlic.decisions)
            text += f"; rule: {_e(f.tuning['rule'])}"
        text += " (thresholds.json)."
    return head + text + "</p>" + _img(plots["thresholds"], "threshold histogram")


def _label_curves(f: _RunFiles, plots: dict[str, bytes], chosen: Sequence[str]) -> str:
    head = "<h2>Precision-recall and F1 curves</h2>"
    main = f.main_eval()
    found = main and f.predictions(main[0], len(main[1]["per_class"]))
    if not found:
        return head + _missing("No saved scores of an evaluation with per-class AP "
                               "(predictions_<split>.npz, written by training and mlic eval).")
    name, report = main
    ap = {r["label"]: r.get("AP") for r in report["per_class"]}
    names = drawn_labels(ap, chosen)
    data = curves_figure(found.probabilities, found.targets, found.labels, names,
                         f.thresholds(len(found.labels)), ap)
    if data is None:
        return head + _missing("None of the labels to draw has a positive in the split.")
    plots["label_curves"] = data
    return (head + f"<p>On {_e(name)}: the {_e(len(names))} labels drawn are the weakest and the "
            f"strongest by AP, and any asked for (<code>mlic report RUN --labels a,b</code>).</p>"
            + _img(data, "precision-recall and F1 curves"))


def _gallery(f: _RunFiles, chosen: Sequence[str]) -> str:
    head = "<h2>Gallery</h2>"
    main = f.main_eval()
    found = main and f.predictions(main[0], len(main[1]["per_class"]))
    maps, note = explained(f.run / "explain")  # `mlic explain RUN` maps the gallery's lessons
    shown: set[tuple[str, str]] = set()
    if not found:
        return head + _missing("No saved scores of an evaluation (predictions_<split>.npz, "
                               "written by training and mlic eval).") + note + explanations(
                                   maps, shown)
    ap = {r["label"]: r.get("AP") for r in main[1]["per_class"]}
    choice = choose(found, f.thresholds(len(found.labels)), ap, chosen, f.min_labels())
    cards = gallery(found, choice, ap, maps, shown)
    tip = "" if maps else ("<p><code>mlic explain RUN</code> adds to these images the maps of the "
                           "labels they got wrong.</p>")
    return (head + f"<p>Images of {_e(main[0])}.</p>{tip}" + cards + note
            + explanations(maps, shown))


def teaching_examples(run_dir: str | Path, labels: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """The gallery's images, each with the labels that show its lesson (``gallery.examples``):
    what ``mlic explain RUN`` maps when no image is given."""
    f = _RunFiles(Path(run_dir))
    main = f.main_eval()
    found = main and f.predictions(main[0], len(main[1]["per_class"]))
    if not found:
        raise ConfigError(f"{run_dir}: no saved scores of an evaluation (predictions_<split>.npz); "
                          f"run `mlic eval {run_dir}` first, or name the images")
    ap = {r["label"]: r.get("AP") for r in main[1]["per_class"]}
    return examples(found, choose(found, f.thresholds(len(found.labels)), ap, labels,
                                  f.min_labels()))


def _labels_together(f: _RunFiles, plots: dict[str, bytes]) -> str:
    head = "<h2>Labels that come together</h2>"
    labels = f.meta.get("label_names")
    parts = []
    try:
        table, heat = _training_cooccurrence(f, labels)
    except Exception as error:  # noqa: BLE001 - the rest of the report matters more
        table, heat = _missing(f"The training labels could not be read: "
                               f"{(str(error).splitlines() or [''])[0]}"), None
    parts.append("<h3>In the training data</h3>" + table)
    if heat is not None:
        plots["cooccurrence"] = heat
        parts.append(_img(heat, "label co-occurrence"))
    main = f.main_eval()
    found = main and f.predictions(main[0], len(main[1]["per_class"]))
    if found:
        parts.append(f"<h3>Confused by the model on {_e(main[0])}</h3><p>A true label missed "
                     f"while another was predicted without being there, on the same image.</p>"
                     + confusions_table(found.probabilities, found.targets,
                                        f.thresholds(len(found.labels)), found.labels,
                                        f.min_labels()))
    return head + "".join(parts)


def _training_cooccurrence(f: _RunFiles, labels: list[str] | None) -> tuple[str, bytes | None]:
    spec, classes = f.section("data", "train"), f.section("data", "classes")
    if not labels or not spec:
        return _missing("No training split or label names in the run folder."), None
    if isinstance(spec, str) and classes:  # as training read it: with the run's label list
        spec = {"path": spec, "classes": classes}
    path = Path(spec["path"] if isinstance(spec, dict) else spec)
    state = path.stat()
    key = np.asarray([str(path.resolve()), str(state.st_size), str(state.st_mtime_ns),
                      str(len(labels))])
    cache = f.run / PAIRS_CACHE  # reading a large table is most of the report's time: once
    try:
        with np.load(cache, allow_pickle=False) as saved:
            if np.array_equal(saved["key"], key):
                return cooccurrence_section(saved["keep"], saved["counts"], labels)
    except (OSError, ValueError, KeyError):
        pass
    from mlic.data.formats import load_table  # only here: the rest of the report reads no data
    keep, counts = training_pairs(load_table(spec).with_labels(labels, "negative"))

    def write(temp: str) -> None:
        with open(temp, "wb") as out:  # a file object: numpy would add .npz to a name
            np.savez_compressed(out, key=key, keep=keep, counts=counts)
    atomic_write(cache, write)
    return cooccurrence_section(keep, counts, labels)


# ----------------------------------------------------------------------------------- helpers
def _label_table(title: str, rows: list[dict[str, Any]]) -> str:
    body = "".join(f'<tr><td>{_e(r["label"])}</td><td class="n">{_pct(r["AP"])}</td>'
                   f'<td class="n">{_e(r.get("positives", ""))}</td></tr>' for r in rows)
    return (f"<table><tr><th colspan=3>{_e(title)}</th></tr><tr><th>label</th><th>AP (%)</th>"
            f"<th>positives</th></tr>{body}</table>")


def _with_params(name: Any, params: Any) -> str | None:
    if not name:
        return None
    if not isinstance(params, dict) or not params:
        return str(name)
    return f"{name} (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {secs:02d} s" if minutes
                                                         else f"{seconds:.1f} s")

