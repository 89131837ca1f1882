"""Decision rules (mlic.decisions): thresholds, a global fallback, at least one label per image."""
from __future__ import annotations

import json

import numpy as np
import pytest

import mlic
from mlic.cli import main
from mlic.decisions import choose_thresholds, decide, global_threshold, rule_metrics
from mlic.metrics import threshold_metrics
from tests.conftest import tiny_config


def test_at_least_one_label_gives_an_empty_image_its_best_label():
    p = np.array([[0.1, 0.3, 0.2], [0.9, 0.6, 0.1]])
    assert decide(p, 0.5, min_labels=0).tolist() == [[False, False, False], [True, True, False]]
    assert decide(p, 0.5, min_labels=1).tolist() == [[False, True, False], [True, True, False]]
    assert decide(p, 0.5, min_labels=2).tolist() == [[False, True, True], [True, True, False]]
    assert decide(np.zeros((0, 3)), 0.5).shape == (0, 3)


def test_global_threshold_maximises_the_overall_f1():
    rng = np.random.default_rng(0)
    t = (rng.random((200, 6)) < 0.3).astype(int)
    p = np.clip(0.4 * t + 0.6 * rng.random(t.shape), 0, 1)
    best = global_threshold(p, t)
    of1 = threshold_metrics(p, t, best)["OF1"]
    for cut in np.linspace(0.01, 0.99, 99):
        assert threshold_metrics(p, t, cut)["OF1"] <= of1 + 1e-12


def test_classes_with_few_positives_take_the_global_threshold():
    rng = np.random.default_rng(1)
    t = (rng.random((100, 3)) < 0.4).astype(int)
    t[:, 2] = 0
    t[:2, 2] = 1  # two positives: too few to cut on
    p = np.clip(0.5 * t + 0.5 * rng.random(t.shape), 0, 1)
    thresholds, fallback = choose_thresholds(p, t, min_positives=5)
    assert thresholds[2] == fallback == global_threshold(p, t)
    assert thresholds[0] != fallback or thresholds[1] != fallback
    # with no minimum, the rare class is cut where its own F1 is best
    alone, _ = choose_thresholds(p, t, min_positives=0)
    assert alone[2] == pytest.approx(min(p[:2, 2]))


def test_rule_metrics_count_labels_and_images_left_without_one():
    p = np.array([[0.1, 0.3], [0.9, 0.6], [0.2, 0.8]])
    t = np.array([[0, 1], [1, 0], [0, 1]])
    m = rule_metrics(p, t, 0.5, min_labels=0)
    assert m["empty_images"] == pytest.approx(1 / 3) and m["labels_per_image"] == pytest.approx(1)
    m = rule_metrics(p, t, 0.5, min_labels=1)
    assert m["empty_images"] == 0 and m["labels_per_image"] == pytest.approx(4 / 3)
    assert m["OR"] == 1.0  # the first image's best label (0.3) is its true one


def test_a_run_without_validation_split_is_not_tuned_on_its_training_images(
        colour_dataset, tmp_path, capsys):
    config = tiny_config(colour_dataset, tmp_path, epochs=1)
    config["data"]["val"], config["data"]["val_fraction"] = None, 0.0
    run = mlic.train(config, progress=False, quiet=True)
    assert main(["tune-thresholds", str(run), "--num-workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no data.val split" in err and "--data" in err and "--split train" in err
    assert not (run / "thresholds.json").exists()
    # asked for explicitly, with a warning; or on other held-out annotations
    assert main(["tune-thresholds", str(run), "--split", "train", "--num-workers", "0",
                 "--no-progress"]) == 0
    assert "tuned on the images the model was trained on" in capsys.readouterr().err
    assert main(["tune-thresholds", str(run), "--data", str(colour_dataset["test"]),
                 "--min-labels", "0", "--num-workers", "0", "--no-progress"]) == 0
    meta = json.loads((run / "checkpoints" / "best.json").read_text())
    assert meta["min_labels"] == 0
    assert json.loads((run / "thresholds.json").read_text())["split"] == "data"


def test_predict_gives_every_image_a_label_unless_asked_not_to(tiny_run, colour_dataset, capsys):
    image = str(colour_dataset["root"] / "images" / "img000.png")
    assert main(["predict", str(tiny_run), image, "--threshold", "1", "--no-progress"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["labels"]) == 1
    assert main(["predict", str(tiny_run), image, "--threshold", "1", "--min-labels", "0",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["labels"] == []
