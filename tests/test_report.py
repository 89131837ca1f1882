"""The run report (mlic/report.py): a self-contained report.html and plots/*.png from a run folder.

Most tests build run folders by hand with the project's own writers (save_config, append_metrics,
metrics_report, write_json), so they take no training; one module-scoped tiny run checks the
hooks in training, `mlic eval` and `mlic tune-thresholds`.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mlic
import mlic.report
from mlic.cli import main
from mlic.config import default_config, save_config
from mlic.engine.checkpoint import write_json
from mlic.engine.decision_rule import decisions_block
from mlic.engine.evaluate import metrics_report
from mlic.predictions import save_predictions
from mlic.errors import ConfigError
from mlic.run_folder import append_metrics
from tests.conftest import tiny_config

EVIL = "<b>&x"          # a label name that must be escaped
EMPTY = "never&seen"    # a label without positives in the test split
NAMES = [EVIL, EMPTY] + [f"label{i:02d}" for i in range(43)]  # 45: the chart and tables are cut
PNG_DATA = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def scores_and_targets(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((60, len(NAMES))) < 0.3).astype(np.int8)
    targets[:, 1] = 0                                      # EMPTY: no positives
    targets[:3, 0], targets[3:, 0] = 1, 0                  # EVIL: 3 positives, scored lowest
    scores = np.clip(0.6 * targets + 0.5 * rng.random(targets.shape), 0, 1)
    scores[:, 0] = np.linspace(0.0, 1.0, 60)
    return scores, targets


def make_run(folder: Path, *, val: bool = True, evaluated: bool = True, tuned: bool = True,
             lr_search: bool = False) -> Path:
    """A run folder in the formats training, `mlic eval` and `mlic tune-thresholds` write."""
    config = default_config()
    config["data"].update(train=str(write_training_labels(folder / "data")), test="data/test.csv",
                          image_size=64, val="data/val.csv" if val else None)
    config["model"].update(backbone="tiny_net", head="linear")
    config["loss"] = {"name": "asl", "params": {"gamma_neg": 4}}
    config["train"]["epochs"] = 3
    (folder / "checkpoints").mkdir(parents=True)
    save_config(config, folder / "config.yaml")
    for epoch, (loss, v, ema, seconds) in enumerate([(0.9, 0.41, 0.45, 61.5),
                                                     (0.5, 0.62, 0.7123, 62.5)], 1):
        append_metrics(folder, {"epoch": epoch, "steps": 10 * epoch, "lr": 1e-3 / epoch,
                                "train_loss": loss, "val_mAP": v if val else None,
                                "val_mAP_ema": ema if val else None, "selected": "ema",
                                "seconds": seconds})
    thresholds = np.linspace(0.2, 0.8, len(NAMES))
    meta = {"format_version": 1, "label_names": NAMES,
            "thresholds": thresholds.tolist() if tuned else 0.5,
            "preprocessing": {"image_size": 64}, "epoch": 2, "selected": "ema",
            "model": {"backbone": "tiny_net", "head": "linear", "num_classes": len(NAMES),
                      "head_params": {}, "drop_rate": 0.0}}
    if val:
        meta["val_mAP"] = 0.7123
    write_json(folder / "checkpoints" / "best.json", meta)
    if tuned:
        write_json(folder / "thresholds.json", {
            "split": "train", "source": "data/train.csv", "num_images": 99,
            "thresholds": dict(zip(NAMES, thresholds.tolist())),
            "on_tuning_split": {"at_0.5": {"CF1": 0.5, "OF1": 0.5, "mean_F1": 0.5},
                                "tuned": {"CF1": 0.6, "OF1": 0.6, "mean_F1": 0.6}}})
    if lr_search:  # as train.lr=auto leaves them (LRSearch.save(run, "lr_finder"))
        write_json(folder / "lr_finder.json", {"method": "range", "lr": 0.00123, "seconds": 4.2})
        Image.new("RGB", (64, 48), "white").save(folder / "lr_finder.png")
    if evaluated:
        scores, targets = scores_and_targets()
        report = metrics_report(scores, targets, NAMES, 0.5,
                                tuned_thresholds=thresholds if tuned else None)
        report.update(split="test", source="data/<test>.csv", known_fraction=0.0)
        if tuned:  # as training and mlic eval write it: the model's own decisions
            report["decisions"] = decisions_block(scores, targets, thresholds, 1)
        write_json(folder / "eval_test.json", report)
        save_predictions(folder / "predictions_test.npz", write_images(folder / "data", 60),
                         NAMES, scores, targets)
        known = metrics_report(scores[:30], targets[:30], NAMES, 0.5)
        known.update(split="test_known50", known_fraction=0.5)
        write_json(folder / "eval_test_known50.json", known)
    return folder


def write_images(folder: Path, count: int) -> list[str]:
    """Small images for the gallery, one with a name that must be escaped."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / (f"img{i:02d}.png" if i else "<i>0.png")
        Image.new("RGB", (40, 30), (4 * i, 100, 200)).save(path)
        paths.append(str(path))
    return paths


def write_training_labels(folder: Path) -> Path:
    """A plain CSV of training labels (the images need not exist: the report reads labels only)."""
    folder.mkdir(parents=True, exist_ok=True)
    _, targets = scores_and_targets(seed=1)
    rows = ["image,labels"] + [f"t{i}.png,\"{'|'.join(NAMES[j] for j in np.flatnonzero(row))}\""
                               for i, row in enumerate(targets)]
    (folder / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "train.csv"


def embedded_pngs(page: str) -> list[Image.Image]:
    images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in PNG_DATA.findall(page)]
    for image in images:
        image.load()
    return images


def plot_names(run: Path) -> set[str]:
    return {p.name for p in (run / "plots").glob("*.png")}


def test_full_report(tmp_path):
    run = make_run(tmp_path / "run", lr_search=True)
    path = mlic.write_report(run)  # the package API
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    report = json.loads((run / "eval_test.json").read_text())

    # self-contained: no script, no network, every figure embedded and decodable
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "<link" not in page.lower()
    assert [image.size for image in embedded_pngs(page)][0] == (64, 48)  # lr_finder.png
    assert len(embedded_pngs(page)) == 7
    assert plot_names(run) == {"training_curves.png", "per_class_ap.png", "ap_vs_positives.png",
                               "thresholds.png", "label_curves.png", "cooccurrence.png"}
    for png in (run / "plots").glob("*.png"):
        with Image.open(png) as image:
            image.verify()

    # summary
    for text in ("tiny_net", "linear", "asl (gamma_neg=4)", "64 px", "2 / 3",
                 f"<td>{len(NAMES)}</td>",
                 "2 min 04 s", "epoch 2, EMA weights, validation mAP 71.23",
                 "lr 0.00123 (range method; lr_finder.json)"):
        assert text in page, text
    # evaluation table: percentages with 2 decimals, as `mlic eval` prints them
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert f'<td class="n">{100 * report[key]:.2f}</td>' in page, key
    assert f'<td class="n">{100 * report["tuned"]["OF1"]:.2f}</td>' in page
    assert "test, tuned" in page and "per-class (tuned)" in page
    decided = report["decisions"]
    assert "test, decisions" in page and f'<td class="n">{100 * decided["OF1"]:.2f}</td>' in page
    assert (f"per-class thresholds, at least 1 label per image: "
            f"{decided['labels_per_image']:.2f} labels per image") in page
    assert '<td class="n">60</td>' in page  # images
    assert "test_known50 (50% of labels known)" in page
    assert 'title="data: data/&lt;test&gt;.csv"' in page
    # per-class: the worst label is in the table, escaped; the empty class is listed
    evil = next(r for r in report["per_class"] if r["label"] == EVIL)
    assert f'<td>&lt;b&gt;&amp;x</td><td class="n">{100 * evil["AP"]:.2f}</td>' in page
    assert EVIL not in page and EMPTY not in page
    assert report["empty_classes"] == [EMPTY] and "never&amp;seen" in page
    assert "lowest 15" in page and "highest 15" in page
    # thresholds from the tuning
    assert "Tuned on train (99 images)" in page and "CF1 50.00 at 0.5, 60.00 tuned" in page
    assert "class=\"missing\"" not in page  # nothing is missing
    # the gallery: bounded JPEG thumbnails, names escaped, the weakest label's errors shown
    thumbnails = len(re.findall(r'src="data:image/jpeg;base64,', page))
    assert 0 < thumbnails <= 60 and "The 8 worst images" in page and "The 4 best images" in page
    assert 'title="' + str(run / "data" / "&lt;i&gt;0.png") + '"' in page and "<i>" not in page
    assert "<h3>&lt;b&gt;&amp;x (AP " in page
    # precision-recall curves, co-occurrence and confusions
    assert "Precision-recall and F1 curves" in page and "images with both" in page
    assert "predicted instead" in page


def test_predictions_are_sampled_above_the_bound(tmp_path, monkeypatch):
    import mlic.predictions
    monkeypatch.setattr(mlic.predictions, "MAX_ENTRIES", 20 * len(NAMES))
    run = make_run(tmp_path / "run")
    found = mlic.predictions.load_predictions(run / "predictions_test.npz")
    assert found.probabilities.shape == (20, len(NAMES)) and found.total == 60
    assert len(set(found.paths)) == 20
    page = mlic.write_report(run).read_text(encoding="utf-8")
    assert "20 of the split&#x27;s 60 images were kept" in page


def test_cli_report_labels_are_shown(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["report", str(run), "--labels", "label07,label09"]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<h3>label07 (AP " in page and "<h3>label09 (AP " in page


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECK_PAGE = """<!DOCTYPE html><html><head><title>check</title></head><body>
<iframe id="page" src="report.html"></iframe><script>
window.onload = () => {
  const doc = document.getElementById("page").contentDocument;
  const images = Array.from(doc.images);
  const out = document.createElement("pre");
  out.id = "result";
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    sections: Array.from(doc.querySelectorAll("h2")).map(h => h.textContent),
    missing: doc.querySelectorAll(".missing").length});
  document.body.appendChild(out);
};
</script></body></html>"""


def rendered(run: Path) -> dict:
    """What headless Chromium makes of report.html: images, which failed to decode, sections."""
    import subprocess
    (run / "check.html").write_text(CHECK_PAGE, encoding="utf-8")
    result = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                             "--allow-file-access-from-files", "--virtual-time-budget=10000",
                             "--dump-dom", (run / "check.html").as_uri()],
                            capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="result">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(chromium() is None, reason="no Chromium installed (apt-get install chromium)")
def test_every_image_and_plot_renders_in_a_browser(tmp_path):
    run = make_run(tmp_path / "run", lr_search=True)
    mlic.write_report(run)
    page = rendered(run)
    jpegs = (run / "report.html").read_text(encoding="utf-8").count("data:image/jpeg")
    assert page["images"] == 7 + jpegs and page["broken"] == [] and page["missing"] == 0
    assert page["sections"] == ["Summary", "Training curves", "Every evaluation of the run",
                                f"Per-class AP on test ({len(NAMES) - 1} labels)",
                                "Decision thresholds", "Precision-recall and F1 curves",
                                "Gallery", "Labels that come together"]
    # the check itself sees a broken image
    report = run / "report.html"
    report.write_text(report.read_text(encoding="utf-8").replace(
        "</body>", '<img alt="bad" src="data:image/png;base64,AAAA"></body>'), encoding="utf-8")
    assert rendered(run)["broken"] == ["bad"]


def test_training_pair_counts_are_read_once_per_table(tmp_path, monkeypatch):
    import mlic.data.formats
    run = make_run(tmp_path / "run")
    mlic.write_report(run)
    assert (run / "label_pairs.npz").is_file()

    def unreadable(spec):
        raise OSError("read again")
    monkeypatch.setattr(mlic.data.formats, "load_table", unreadable)
    assert "images with both" in mlic.write_report(run).read_text(encoding="utf-8")  # the cache
    with open(run / "data" / "train.csv", "a", encoding="utf-8") as f:
        f.write("t99.png,label01\n")  # another table: counted again
    page = mlic.write_report(run).read_text(encoding="utf-8")
    assert "The training labels could not be read: read again" in page


def test_every_evaluation_is_a_row_side_by_side(tmp_path):
    run = make_run(tmp_path / "run")
    report = json.loads((run / "eval_test.json").read_text())
    for name, model in (("test_model_int8", "export/model_int8.xml"), ("other<set>", str(run))):
        write_json(run / f"eval_{name}.json", {**report, "split": name, "model": model})
    page = mlic.write_report(run).read_text(encoding="utf-8")
    assert ">test_model_int8</td><td>model_int8.xml</td>" in page
    assert ">other&lt;set&gt;</td><td>selected weights</td>" in page
    assert page.index(">test</td>") < page.index(">other&lt;set&gt;<")  # the run's splits first

def test_missing_inputs_are_explained(tmp_path):
    run = make_run(tmp_path / "run")
    mlic.write_report(run)
    assert "per_class_ap.png" in plot_names(run)
    # the same folder without evaluations, validation split, tuned thresholds or best.json
    for name in ("eval_test.json", "eval_test_known50.json", "thresholds.json",
                 "checkpoints/best.json", "metrics.csv"):
        (run / name).unlink()
    bare = make_run(tmp_path / "bare", val=False, evaluated=False, tuned=False)
    (run / "metrics.csv").write_bytes((bare / "metrics.csv").read_bytes())  # val_mAP columns empty
    page = mlic.write_report(run).read_text(encoding="utf-8")
    assert "Not in the run folder: checkpoints/best.json." in page
    assert "No validation mAP in metrics.csv" in page
    assert "No eval_*.json" in page and "<th>CF1</th>" not in page
    assert "No evaluation with per-class AP" in page
    assert "No tuned per-class thresholds" in page
    assert len(embedded_pngs(page)) == 1
    assert plot_names(run) == {"training_curves.png"}  # stale figures are removed

    # no metrics.csv at all, and an unreadable eval file: said, not fatal
    (run / "metrics.csv").unlink()
    (run / "eval_val.json").write_text("{not json", encoding="utf-8")
    (run / "config.yaml").write_text("just a string\n", encoding="utf-8")
    page = mlic.write_report(run).read_text(encoding="utf-8")
    assert "No metrics.csv rows" in page and "eval_val.json could not be read" in page
    assert "config.yaml could not be read and is left out: not a mapping" in page
    assert plot_names(run) == set() and not embedded_pngs(page)


def test_no_validation_split(tmp_path):
    page = mlic.write_report(make_run(tmp_path / "run", val=False, tuned=False)).read_text()
    assert "no validation split to select on" in page
    assert "every label is decided at 0.5" in page


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_cli_report_on_a_non_run_folder(tmp_path, capsys, make):
    target = tmp_path / "target"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    assert main(["report", str(target)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and err.startswith("mlic report: error: ")
    assert "not a run folder" in err and str(target) in err and "Traceback" not in captured.err
    with pytest.raises(ConfigError):
        mlic.write_report(target)


def test_cli_report(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"written: {run / 'report.html'}"
    assert (run / "report.html").is_file()


def test_report_or_warn(tmp_path, caplog, monkeypatch):
    assert mlic.report.write_report_or_warn(tmp_path) is None  # not a run: skipped, silently
    assert not caplog.records and not (tmp_path / "report.html").exists()
    run = make_run(tmp_path / "run")

    def broken(run_dir):
        raise ValueError("cannot draw\nsecond line")
    monkeypatch.setattr(mlic.report, "write_report", broken)
    with caplog.at_level(logging.WARNING):
        assert mlic.report.write_report_or_warn(run) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: {run / 'report.html'} not written: ValueError: cannot draw"]


# ------------------------------------------------------------- through a real tiny training run
@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
    """The shared run, copied once for this module's tests, which evaluate and tune in it."""
    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("runs") / tiny_run.name))


def test_training_writes_the_report(tiny_run):
    trained = tiny_run  # read only
    page = (trained / "report.html").read_text(encoding="utf-8")
    report = json.loads((trained / "eval_test.json").read_text())
    assert f'<td class="n">{100 * report["mAP"]:.2f}</td>' in page
    assert f"report: {trained / 'report.html'}" in (trained / "train.log").read_text()
    assert {"training_curves.png", "per_class_ap.png", "thresholds.png"} <= plot_names(trained)
    assert "Tuned on val" in page and "test, decisions" in page  # the rule training chose


def test_eval_and_tune_thresholds_refresh_the_report(trained, capsys):
    assert main(["tune-thresholds", str(trained), "--num-workers", "0", "--no-progress"]) == 0
    assert "thresholds.png" in plot_names(trained)
    assert "Tuned on val" in (trained / "report.html").read_text(encoding="utf-8")
    (trained / "report.html").unlink()
    assert main(["eval", str(trained), "--num-workers", "0", "--no-progress"]) == 0
    report = json.loads((trained / "eval_test.json").read_text())
    page = (trained / "report.html").read_text(encoding="utf-8")
    assert f'<td class="n">{100 * report["tuned"]["OF1"]:.2f}</td>' in page


def test_a_report_failure_does_not_fail_eval(trained, capsys, caplog, monkeypatch):
    def broken(run_dir):
        raise RuntimeError("no space left for the report")
    monkeypatch.setattr(mlic.report, "write_report", broken)
    (trained / "eval_val.json").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        assert main(["eval", str(trained), "--split", "val", "--num-workers", "0",
                     "--no-progress"]) == 0
    assert (trained / "eval_val.json").is_file()
    assert "written:" in capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"warning: {trained / 'report.html'} not written: RuntimeError: "
                        f"no space left for the report"]


def test_a_report_failure_does_not_fail_training(colour_dataset, tmp_path, monkeypatch):
    def broken(run_dir):
        raise RuntimeError("matplotlib exploded")
    monkeypatch.setattr(mlic.report, "write_report", broken)
    config = tiny_config(colour_dataset, tmp_path, epochs=1)
    config["data"]["val"] = None
    run = mlic.train(config, progress=False, quiet=True)
    assert (run / "eval_test.json").is_file() and not (run / "report.html").exists()
    log = (run / "train.log").read_text()
    assert "not written: RuntimeError: matplotlib exploded" in log and "done:" in log
