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

