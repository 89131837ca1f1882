"""The run folder (mlic.run_folder): its config, its splits, its checkpoints."""
from __future__ import annotations

import pytest
import yaml

from mlic.errors import ConfigError, WeightsError
from mlic.run_folder import (checkpoints_of, is_run_folder, new_run_dir, resolve_checkpoint,
                             run_config, run_of_checkpoint, run_split)


def make_run(tmp_path, data: dict):
    run = new_run_dir(tmp_path, "r")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    return run


def test_new_run_dir_is_a_fresh_folder_with_checkpoints(tmp_path):
    first, second = new_run_dir(tmp_path, "r"), new_run_dir(tmp_path, "r")
    assert first != second and first.name.startswith("r-") and second.name.endswith("-2")
    assert checkpoints_of(first).is_dir() and not is_run_folder(first)  # no config.yaml yet


def test_run_split_is_the_first_set_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the splits' files are there (run_split finds them)
    for name in ("a.csv", "t.csv", "c.txt"):
        (tmp_path / name).write_text("")
    run = make_run(tmp_path, {"train": "a.csv", "val": None, "test": "t.csv", "classes": "c.txt"})
    assert is_run_folder(run) and run_config(run)["data"]["train"] == "a.csv"
    assert run_split(run, "val", "test") == ("test", "t.csv")
    assert run_split(run, "train") == ("train", "a.csv")
    assert run_split(run, "train", with_classes=True) == ("train", {"path": "a.csv",
                                                                     "classes": "c.txt"})
    with pytest.raises(ConfigError, match=r"config.yaml: no data.val split; pass --data"):
        run_split(run, "val", hint="; pass --data")
    with pytest.raises(ConfigError, match=r"not a run folder \(no config.yaml\); pass --data"):
        run_split(tmp_path / "nowhere", "test", hint="; pass --data")


def test_checkpoints_are_found_from_the_run_and_back(tmp_path):
    run = make_run(tmp_path, {})
    with pytest.raises(WeightsError, match="no checkpoint found"):
        resolve_checkpoint(run)
    for name in ("last.json", "last.safetensors"):
        (checkpoints_of(run) / name).write_text("{}")
    assert resolve_checkpoint(run) == checkpoints_of(run) / "last.json"  # no best yet: last
    for name in ("best.json", "best.safetensors"):
        (checkpoints_of(run) / name).write_text("{}")
    best = checkpoints_of(run) / "best.json"
    assert resolve_checkpoint(run) == best == resolve_checkpoint(best.with_suffix(".safetensors"))
    assert run_of_checkpoint(best) == run == run_of_checkpoint(run)
