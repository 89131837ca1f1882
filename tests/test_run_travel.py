"""Runs that travel: a run folder moved or copied works from any working directory, its data
found where it was or, moved along with the run, at the same place relative to it."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

import mlic
from mlic.cli import main
from tests.conftest import tiny_config

QUIET = ["--num-workers", "0", "--no-progress"]


@pytest.fixture
def project(colour_dataset, tmp_path, monkeypatch):
    """A project folder: the data, and a run trained from inside it with relative paths."""
    home = tmp_path / "project"
    shutil.copytree(colour_dataset["root"], home / "data")
    monkeypatch.chdir(home)
    config = tiny_config({"train": "data/train.csv", "test": "data/test.csv"}, "runs", epochs=1)
    run = mlic.train(config, progress=False, quiet=True)
    monkeypatch.chdir(tmp_path)
    return home, home / run


def test_config_records_absolute_paths(project):
    home, run = project
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert data["train"] == str(home / "data" / "train.csv")
    assert data["test"] == data["val"] == str(home / "data" / "test.csv")


def test_a_copied_run_works_from_any_folder(project, tmp_path, monkeypatch):
    _, run = project
    elsewhere = shutil.copytree(run, tmp_path / "elsewhere" / "copied")
    monkeypatch.chdir("/")
    assert main(["eval", str(elsewhere), *QUIET]) == 0
    assert main(["tune-thresholds", str(elsewhere), *QUIET]) == 0
    assert json.loads((elsewhere / "eval_test.json").read_text())["num_images"] == 24


def test_a_run_moved_with_its_data_finds_it_relative_to_itself(project, tmp_path, monkeypatch,
                                                               capsys):
    home, run = project
    moved = tmp_path / "moved"
    shutil.move(home, moved)  # the data's recorded place is gone
    monkeypatch.chdir("/")
    moved_run = moved / "runs" / run.name
    assert main(["eval", str(moved_run), *QUIET]) == 0
    report = json.loads((moved_run / "eval_test.json").read_text())
    assert report["source"].startswith(str(moved))
    # neither place: the error names both, and --data points elsewhere
    shutil.rmtree(moved / "data")
    capsys.readouterr()
    assert main(["eval", str(moved_run), *QUIET]) == 2
    err = capsys.readouterr().err
    assert f"data.test {home / 'data' / 'test.csv'} does not exist, nor at" in err
    assert "pass --data" in err


def test_an_older_run_with_relative_paths_is_found_from_elsewhere(project, monkeypatch):
    home, run = project
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["output_dir"] = "runs"  # as runs were written before: relative to the training's folder
    config["data"].update(train="data/train.csv", val="data/test.csv", test="data/test.csv")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir("/")
    assert main(["eval", str(run), *QUIET]) == 0


def test_resume_from_another_folder(project, monkeypatch):
    _, run = project
    monkeypatch.chdir("/")
    assert mlic.train(resume=run, progress=False, quiet=True) == run
