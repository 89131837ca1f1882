"""Label names that do not match the model's are counted, explained and, when few match, refused."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mlic.cli import main
from mlic.errors import DataError
from mlic.label_alignment import align_labels, near_match

MODEL = ["red", "green", "blue", "yellow", "hot dog"]


def test_near_matches_name_case_separators_and_spelling():
    assert "'red' (case" in near_match("RED", MODEL)
    assert "'hot dog' (case or separators" in near_match("Hot_Dog", MODEL)
    assert "2 labels joined with ';'" in near_match("red;blue", MODEL)
    assert "'yellow' (spelling)" in near_match("yelow", MODEL)
    assert near_match("zebra", MODEL) is None


def test_too_small_an_overlap_is_refused_unless_the_subset_is_asked_for():
    alignment = align_labels(["RED", "GREEN", "BLUE", "yellow"], MODEL)
    assert alignment.matched == ["yellow"] and alignment.overlap == 0.25
    assert "1 of the data's 4 label names" in alignment.summary()
    with pytest.raises(DataError, match="--allow-label-subset"):
        alignment.check("data.csv")
    alignment.check("data.csv", allow_subset=True)
    with pytest.raises(DataError, match="no label name matches"):
        align_labels(["RED"], MODEL).check("data.csv", allow_subset=True)
    # a data set with fewer labels than the model, all of them the model's, is fine
    align_labels(["red", "blue"], MODEL).check("data.csv")


def relabelled(source: Path, out: Path, rename) -> Path:
    rows = list(csv.reader(open(source, encoding="utf-8")))
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(rows[0])
        for image, labels in rows[1:]:
            writer.writerow([image, "|".join(map(rename, labels.split("|")))])
    return out


def test_eval_refuses_upper_cased_labels_and_scores_the_subset_when_asked(
        tiny_run_copy, colour_dataset, capsys):
    # beside the original: its image paths are relative to the annotation file's folder
    upper = relabelled(colour_dataset["test"], colour_dataset["root"] / "upper.csv",
                       lambda n: n if n == "red" else n.upper())
    args = ["eval", str(tiny_run_copy), "--data", str(upper), "--num-workers", "0",
            "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 of the data's 4 label names" in err and "'GREEN' -> 'green' (case" in err
    assert not (tiny_run_copy / "eval_upper.json").exists()
    assert main(args + ["--allow-label-subset"]) == 0
    captured = capsys.readouterr()
    assert "1 of the data's 4 label names are among the model's 4" in captured.err
    report = json.loads((tiny_run_copy / "eval_upper.json").read_text())
    assert report["labels"]["matched"] == 1
    assert sorted(report["labels"]["not_in_model"]) == ["BLUE", "GREEN", "YELLOW"]
    assert len([r for r in report["per_class"] if r["AP"] is not None]) == 1
