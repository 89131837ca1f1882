"""mlic tune-thresholds: tuned on a clean pass, stored with the model, used by eval and predict."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import mlic
from mlic.cli import main
from mlic.decisions import decide
from mlic.metrics import threshold_metrics


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """The shared run, copied once for this module (tuning writes into it)."""
    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("runs") / tiny_run.name))


def test_tune_store_and_use(run, colour_dataset, capsys):
    assert main(["tune-thresholds", str(run), "--num-workers", "0", "--no-progress"]) == 0
    summary = json.loads((run / "thresholds.json").read_text())
    meta = json.loads((run / "checkpoints" / "best.json").read_text())
    labels = meta["label_names"]
    assert list(summary["thresholds"]) == labels
    assert meta["thresholds"] == [summary["thresholds"][n] for n in labels]
    # tuned on the validation split by default, never the training images, with every rule's result
    assert summary["split"] == "val" and not summary["on_training_images"]
    assert set(summary["on_tuning_split"]) == {"at_0.5", "global", "tuned"}
    assert summary["on_tuning_split"]["tuned"]["empty_images"] == 0
    assert meta["min_labels"] == 1

    # predict decides with the per-class thresholds
    predictor = mlic.Predictor.load(run)
    table = mlic.load_table(str(colour_dataset["test"]))
    paths = [table.image_path(i) for i in range(len(table))]
    scores = predictor.scores(paths)
    thresholds = np.asarray(meta["thresholds"])
    chosen = decide(scores, thresholds, min_labels=1)
    for result, row, yes in zip(predictor.predict(paths), scores, chosen):
        assert set(result["labels"]) == {labels[j] for j in np.flatnonzero(yes)}
        assert result["labels"]  # no image without a label

    # eval reports the 0.5 columns and the tuned ("adapt") columns
    capsys.readouterr()
    assert main(["eval", str(run), "--num-workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "with tuned per-class thresholds" in out
    report = json.loads((run / "eval_test.json").read_text())
    targets = table.with_labels(labels).targets
    expected = threshold_metrics(scores, targets, thresholds)
    assert report["tuned"]["OF1"] == pytest.approx(expected["OF1"], abs=1e-9)
    assert report["OF1"] == pytest.approx(threshold_metrics(scores, targets, 0.5)["OF1"], abs=1e-9)


def test_tune_on_missing_split_is_a_clear_error(run, capsys):
    assert main(["tune-thresholds", str(run), "--split", "nosuch", "--no-progress"]) == 2
    assert "config.yaml: no data.nosuch split; pass --data" in capsys.readouterr().err



def test_training_chooses_the_rule_on_its_validation_split(tiny_run):
    """Training ends with the decision rule chosen on the validation scores of the selected
    weights, stored with them, and the test evaluation decides with it."""
    summary = json.loads((tiny_run / "thresholds.json").read_text())
    meta = json.loads((tiny_run / "checkpoints" / "best.json").read_text())
    assert summary["split"] == "val" and not summary["on_training_images"]
    assert meta["thresholds"] == [summary["thresholds"][n] for n in meta["label_names"]]
    assert meta["min_labels"] == 1
    # the same rule from the validation predictions the run saved, chosen independently here
    saved = np.load(tiny_run / "predictions_val.npz")
    from mlic.decisions import choose_thresholds
    expected, _ = choose_thresholds(saved["probabilities"].astype(np.float64), saved["targets"])
    np.testing.assert_allclose(meta["thresholds"], expected, atol=1e-6)
    report = json.loads((tiny_run / "eval_test.json").read_text())
    assert report["decisions"]["rule"] == "per-class thresholds, at least 1 label per image"
    assert report["decisions"]["empty_images"] == 0 and "tuned" in report


@pytest.mark.parametrize("how", ["no validation split", "tune_thresholds off"])
def test_training_without_a_rule_says_how_to_get_one(colour_dataset, tmp_path, how):
    from conftest import tiny_config
    config = tiny_config(colour_dataset, tmp_path, epochs=1)
    if how == "no validation split":
        config["data"]["val"], config["data"]["val_fraction"] = None, 0.0
    else:
        config["eval"]["tune_thresholds"] = False
    run = mlic.train(config, progress=False, quiet=True)
    meta = json.loads((run / "checkpoints" / "best.json").read_text())
    assert meta["thresholds"] == 0.5 and meta["min_labels"] == 1
    assert not (run / "thresholds.json").exists()
    log = (run / "train.log").read_text()
    assert "mlic tune-thresholds" in log and ("no validation split" if how.startswith("no")
                                              else "eval.tune_thresholds is off") in log
    report = json.loads((run / "eval_test.json").read_text())
    assert report["decisions"]["rule"] == "threshold 0.5, at least 1 label per image"


def test_without_validation_split_a_share_of_the_training_images_is_held_out(
        colour_dataset, tmp_path, capsys):
    """data.val_fraction (default 0.1): held out with the seed, saved in the run, used for the
    selection and the rule; tune-thresholds and eval --split val find it there."""
    from conftest import tiny_config
    from mlic.data.formats import load_table
    from mlic.engine.splits import hold_out
    config = tiny_config(colour_dataset, tmp_path, epochs=1)
    config["data"]["val"] = None
    run = mlic.train(config, progress=False, quiet=True)
    train = load_table(str(colour_dataset["train"]))
    rest, held = hold_out(train, 0.1, seed=0)
    assert len(held) == 5 and len(rest) == 43  # 10% of 48, drawn with the run's seed
    saved = load_table({"path": str(run / "val_held_out.csv"), "classes": str(run / "labels.txt"),
                        "allow_outside_root": True})
    assert [str(saved.image_path(i)) for i in range(len(saved))] == \
        [str(held.image_path(i).resolve()) for i in range(len(held))]
    assert (saved.with_labels(held.label_names).targets == held.targets).all()
    assert "5 of the 48 training images" in (run / "train.log").read_text()
    assert json.loads((run / "thresholds.json").read_text())["num_images"] == 5
    assert json.loads((run / "eval_val.json").read_text())["num_images"] == 5
    assert main(["tune-thresholds", str(run), "--num-workers", "0", "--no-progress"]) == 0
    assert json.loads((run / "thresholds.json").read_text())["split"] == "val"


def test_hold_out_keeps_at_least_two_training_images():
    from mlic.data.table import LabelTable
    from mlic.engine.splits import hold_out
    table = LabelTable(["a.png", "b.png"], ["x"], np.array([[1], [0]]))
    assert hold_out(table, 0.5, seed=0) == (table, None)  # 1 + 1: too few to train on
    table = LabelTable([f"{i}.png" for i in range(20)], ["x"], np.zeros((20, 1)))
    rest, held = hold_out(table, 0.25, seed=3)
    assert len(held) == 5 and sorted([*rest.paths, *held.paths]) == sorted(table.paths)
    assert list(hold_out(table, 0.25, seed=3)[1].paths) == list(held.paths)  # the same on resume
