"""Every evaluation is kept: named after its data, never overwriting the run's splits or another."""
from __future__ import annotations

import json
import shutil

from mlic.cli import main

QUIET = ["--num-workers", "0", "--no-progress"]


def test_evaluations_of_other_data_never_overwrite_each_other(tiny_run_copy, colour_dataset,
                                                              tmp_path, capsys):
    run = tiny_run_copy
    assert main(["eval", str(run), *QUIET]) == 0
    own = json.loads((run / "eval_test.json").read_text())
    root = colour_dataset["root"]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    shutil.copy(colour_dataset["test"], one / "test.csv")
    lines = colour_dataset["test"].read_text().splitlines()
    (two / "test.csv").write_text("\n".join(lines[:13]) + "\n")  # other data, the same file name
    for folder in (one, two):
        assert main(["eval", str(run), "--data", str(folder / "test.csv"), "--option",
                     f"root={root}", *QUIET]) == 0
    assert json.loads((run / "eval_test.json").read_text()) == own  # the run's own test split
    first = json.loads((run / "eval_test-data.json").read_text())
    second = json.loads((run / "eval_test-data-2.json").read_text())
    assert (first["num_images"], second["num_images"]) == (24, 12)
    # the same data again replaces its own evaluation only
    assert main(["eval", str(run), "--data", str(one / "test.csv"), "--option", f"root={root}",
                 *QUIET]) == 0
    assert not (run / "eval_test-data-3.json").exists()
    # a name of the user's
    assert main(["eval", str(run), "--data", str(two / "test.csv"), "--option", f"root={root}",
                 "--name", "held_out", *QUIET]) == 0
    assert (run / "eval_held_out.json").is_file()
    page = (run / "report.html").read_text()
    for name in ("test-data", "test-data-2", "held_out"):
        assert f">{name}<" in page
    capsys.readouterr()
    # --split names the run's own splits only; --name never takes one of theirs
    assert main(["eval", str(run), "--data", str(one / "test.csv"), "--split", "test", *QUIET]) == 2
    assert "--split picks one of the run's own splits" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", str(one / "test.csv"), "--name", "test", *QUIET]) == 2
    assert "name of one of the run's own splits" in capsys.readouterr().err


def test_eval_json_output(tiny_run_copy, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["eval", str(tiny_run_copy), "--json", "--output", str(out), *QUIET]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"] == "test" and json.loads(out.read_text())["mAP"] == printed["mAP"]
