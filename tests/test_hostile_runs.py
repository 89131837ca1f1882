"""Careless values and hostile surroundings of a training run (issue 19): the output folder, the
disk, the splits, the checkpoints. Each gets one clear message naming what to fix, and what was
saved stays usable."""
from __future__ import annotations

import errno
import json
import pickle

import pytest
import torch

import mlic
import mlic.engine.trainer
from mlic.cli import main
from mlic.engine import checkpoint as ckpt
from mlic.errors import WeightsError
from mlic.models.weights import read_state_dict
from conftest import tiny_config, write_plain_csv, make_colour_images
from test_errors import cli_error
from test_training import only_run


def config_file(tmp_path, config: dict) -> str:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_an_output_dir_that_is_a_file_or_unwritable(colour_dataset, tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    config = tiny_config(colour_dataset, tmp_path / "afile")
    cli_error(capsys, ["train", "--config", config_file(tmp_path, config), "--no-progress"],
              f"output_dir {tmp_path / 'afile'} is a file, not a folder")
    config = tiny_config(colour_dataset, "/proc/mlic-runs")  # no one may make folders there
    cli_error(capsys, ["train", "--config", config_file(tmp_path, config), "--no-progress"],
              "output_dir /proc/mlic-runs cannot hold a new run folder")


def test_a_full_disk_stops_the_run_and_keeps_the_last_epoch(colour_dataset, tmp_path, capsys,
                                                            monkeypatch) -> None:
    real_save, saves = torch.save, []

    def disk_full_at_the_second_save(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_the_second_save)
    config = tiny_config(colour_dataset, tmp_path / "runs", epochs=2)
    cli_error(capsys, ["train", "--config", config_file(tmp_path, config), "--no-progress"],
              "(No space left on device): training stopped; the last complete epoch is saved; "
              "free space and continue with mlic train --resume")
    run = only_run(tmp_path / "runs")
    assert ckpt.load_training_state(run / "checkpoints")["epoch"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert ckpt.load_training_state(run / "checkpoints")["epoch"] == 2


def test_a_full_disk_before_the_first_epoch(colour_dataset, tmp_path, capsys,
                                           monkeypatch) -> None:
    def disk_full(config, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(mlic.engine.trainer, "save_config", disk_full)
    config = tiny_config(colour_dataset, tmp_path / "runs")
    cli_error(capsys, ["train", "--config", config_file(tmp_path, config), "--no-progress"],
              "config.yaml (No space left on device): training stopped; no epoch was saved")


def test_a_training_split_of_one_image(colour_dataset, tmp_path, capsys) -> None:
    rows = make_colour_images(tmp_path / "images", 1)
    one = write_plain_csv(tmp_path / "one.csv", rows, "images/")
    config = tiny_config({**colour_dataset, "train": one}, tmp_path / "runs")
    cli_error(capsys, ["train", "--config", config_file(tmp_path, config), "--no-progress"],
              f"{one}: data.train: 1 usable image(s); training needs at least 2")


def test_nan_in_the_first_epoch_promises_no_checkpoint(colour_dataset, tmp_path, capsys,
                                                       monkeypatch) -> None:
    from mlic.engine.step import OptimizerStep
    original = OptimizerStep.__call__

    def nan(self, images, targets, label_states=None):
        _, stepped = original(self, images, targets, label_states)
        return float("nan"), stepped

    monkeypatch.setattr(OptimizerStep, "__call__", nan)
    config = tiny_config(colour_dataset, tmp_path / "runs")
    err = cli_error(capsys, ["train", "--config", config_file(tmp_path, config), "--no-progress"],
                    "the loss became nan at epoch 1, step 1",
                    "no epoch was completed, so no checkpoint was saved")
    assert "kept" not in err and "resume" not in err


def test_a_validation_split_without_training_labels(colour_dataset, tmp_path, capsys) -> None:
    rows = make_colour_images(tmp_path / "images", 4)
    val = write_plain_csv(tmp_path / "val.csv", [(n, ["unicorn"]) for n, _ in rows], "images/")
    config = tiny_config(colour_dataset, tmp_path / "runs")
    config["data"]["val"] = str(val)
    cli_error(capsys, ["train", "--config", config_file(tmp_path, config), "--no-progress"],
              f"{val}: data.val: none of its 4 images has a label among the 4 training labels "
              f"(its labels: unicorn)")


def test_evaluation_json_is_valid_json_without_nan(tmp_path) -> None:
    ckpt.write_json(tmp_path / "e.json", {"mAP": float("nan"), "per_class": [{"AP": float("inf")}],
                                          "CP": 0.5})
    text = (tmp_path / "e.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"mAP": None, "per_class": [{"AP": None}], "CP": 0.5}


def test_a_duplicate_in_the_classes_file_names_that_file(colour_dataset, tmp_path, capsys) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("red\ngreen\nred\nblue\nyellow\n")
    config = tiny_config(colour_dataset, tmp_path / "runs")
    config["data"]["classes"] = str(classes)
    err = cli_error(capsys, ["train", "--config", config_file(tmp_path, config), "--no-progress"],
                    f"{classes}: class 'red' is listed twice")
    assert "train.csv" not in err


def test_unreadable_checkpoints_are_not_called_pickled_code(colour_dataset, tmp_path,
                                                            capsys) -> None:
    run = mlic.train(tiny_config(colour_dataset, tmp_path / "runs", epochs=1), progress=False,
                     quiet=True)
    state = run / "checkpoints" / ckpt.STATE_FILE
    for damaged in (b"hello world" * 10, pickle.dumps({"a": 1}), b"\0" * 1000):
        state.write_bytes(damaged)
        err = cli_error(capsys, ["train", "--resume", run, "--no-progress"], state,
                        "cannot read the training state")
        assert "pickled" not in err and "run code" not in err
        weights = tmp_path / "w.pth"
        weights.write_bytes(damaged)
        with pytest.raises(WeightsError, match="not a readable PyTorch weights file") as caught:
            read_state_dict(weights)
        assert "run code" not in str(caught.value)


def test_the_pixel_bound_reaches_training(colour_dataset, tmp_path, capsys) -> None:
    config = tiny_config(colour_dataset, tmp_path / "runs")
    config["data"]["max_image_pixels"] = 1000  # the 32 x 32 test images have 1024
    cli_error(capsys, ["train", "--config", config_file(tmp_path, config), "--no-progress"],
              "32x32 is 0 MP, above data.max_image_pixels = 0.001 MP")
