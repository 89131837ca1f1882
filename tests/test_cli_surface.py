"""The command line as users expect it: --version, a fast --help, one spelling of the output flag,
the same defaults, clean errors for a device that is not there."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mlic
from mlic.cli import build_parser, main
from mlic.config import load_config


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mlic {mlic.__version__}"


def test_help_loads_no_heavy_package():
    """`import mlic` and `mlic --help` import neither torch nor timm: they take a fraction of a
    second instead of the 8-10 s those cost (benchmarks/results/cli_startup.md)."""
    code = ("import sys, mlic, mlic.cli; mlic.cli.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'timm', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert mlic.Predictor.__name__ == "Predictor"  # the public names still load on first use
    with pytest.raises(AttributeError):
        mlic.nosuch  # noqa: B018


def test_one_output_flag_with_the_old_spellings_kept():
    parser = build_parser()
    for command in (["export", "RUN"], ["demo"], ["lr-find"], ["tune"], ["data", "emoji"]):
        for flag in ("--output", "-o", "--out"):
            assert parser.parse_args([*command, flag, "x"]).out == "x"
    for command in (["predict", "RUN", "a.png"], ["eval", "RUN"], ["bench", "RUN"]):
        for flag in ("--output", "-o"):
            assert parser.parse_args([*command, flag, "x"]).output == "x"


def test_the_same_defaults_across_commands():
    parser = build_parser()
    runs = {"eval": ["eval", "RUN"], "predict": ["predict", "RUN", "a.png"],
            "tune-thresholds": ["tune-thresholds", "RUN"]}
    for name, argv in runs.items():
        args = parser.parse_args(argv)
        assert args.device == "auto", name
        assert args.no_progress is False, name
        assert getattr(args, "tag", "best") == "best", name
    assert parser.parse_args(["export", "RUN"]).tag == parser.parse_args(["bench", "RUN"]).tag == "best"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_device_that_is_not_there_is_a_clean_error(tiny_run, colour_dataset, capsys):
    image = str(colour_dataset["root"] / "images" / "img000.png")
    assert main(["predict", str(tiny_run), image, "--device", "cuda", "--no-progress"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_predict_shows_progress_on_a_terminal(tiny_run, colour_dataset, capsys, monkeypatch):
    images = str(colour_dataset["root"] / "images")
    assert main(["predict", str(tiny_run), images]) == 0
    assert capsys.readouterr().err == ""  # not a terminal (a log file, a pipe): no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["predict", str(tiny_run), images]) == 0
    assert "predict" in capsys.readouterr().err  # the bar, on standard error
    assert main(["predict", str(tiny_run), images, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(json.loads(captured.out)) == 48


def test_train_takes_overrides_as_a_mapping():
    config = load_config(None, {"train.lr": 0.003, "model.head": "ml_decoder"})
    assert config["train"]["lr"] == 0.003 and config["model"]["head"] == "ml_decoder"


def test_a_typed_package():
    assert (Path(mlic.__file__).parent / "py.typed").is_file()
