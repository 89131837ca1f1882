"""Shared fixtures: a tiny, learnable multi-label image set written in the plain CSV format, and
one run trained on it per test session.

Each 32x32 image holds 1-3 coloured squares; the labels are the colours present. A tiny timm
backbone learns it in a few steps, so end-to-end tests run in seconds on a CPU.

Tests marked ``slow`` (multi-process DDP, SIGKILL mid-run, INT8 export, most export-parity cases,
a fresh interpreter's start: seconds each) run by default, as in CI; ``pytest -m "not slow"`` is
the fast lane, which still touches every module.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mlic

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
TINY_BACKBONE = "test_efficientnet"


def make_colour_images(folder: Path, count: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    rows = []
    for i in range(count):
        present = sorted(rng.choice(names, size=rng.integers(1, 4), replace=False).tolist())
        image = np.full((32, 32, 3), 255, dtype=np.uint8)
        for k, name in enumerate(present):
            y, x = divmod(k, 2)
            image[y * 16 + 2:y * 16 + 14, x * 16 + 2:x * 16 + 14] = COLOURS[name]
        path = folder / f"img{i:03d}.png"
        Image.fromarray(image).save(path)
        rows.append((path.name, present))
    return rows


def write_plain_csv(path: Path, rows: list[tuple[str, list[str]]], prefix: str = "") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        for name, labels in rows:
            writer.writerow([prefix + name, "|".join(labels)])
    return path


@pytest.fixture(scope="session")
def colour_dataset(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("colours")
    train = write_plain_csv(root / "train.csv", make_colour_images(root / "images", 48, seed=0),
                            "images/")
    test = write_plain_csv(root / "test.csv", make_colour_images(root / "test_images", 24, seed=1),
                           "test_images/")
    return {"root": root, "train": train, "test": test}


# The defaults are the paper's recipe (ML-Decoder, AAM, SAM, ...); most tests want the simplest loop.
SIMPLE_RECIPE = {
    "model": {"backbone": TINY_BACKBONE, "head": "linear", "pretrained": False},
    "loss": {"name": "bce", "params": {}},
    "train": {"optimizer": "adamw", "weight_decay": 1e-4, "sam": False, "double_bias_lr": False,
              "ema": 0.0, "early_stopping": False, "div_factor": 25.0, "final_div_factor": 1e4,
              "grad_clip": 0.0},
    "augment": {"randaugment": None, "cutout": 0.0},
}


def tiny_config(dataset: dict[str, Path], out: Path, **train) -> dict:
    return {
        "output_dir": str(out), "name": "tiny", "device": "cpu",
        "data": {"train": str(dataset["train"]), "val": str(dataset["test"]),
                 "test": str(dataset["test"]), "image_size": 32, "num_workers": 0,
                 "augment": dict(SIMPLE_RECIPE["augment"])},
        "model": dict(SIMPLE_RECIPE["model"]),
        "loss": {"name": "bce", "params": {}},
        "train": {**SIMPLE_RECIPE["train"], "epochs": 2, "batch_size": 16, "lr": 0.01, **train},
        "eval": {"batch_size": 32},
    }


@pytest.fixture(scope="session")
def tiny_run(colour_dataset, tmp_path_factory) -> Path:
    """One epoch of the simple recipe on the colour images, trained once per session, for the
    tests that only read a run; a test that writes into a run takes ``tiny_run_copy``."""
    out = tmp_path_factory.mktemp("shared_runs")
    return mlic.train(tiny_config(colour_dataset, out, epochs=1), progress=False, quiet=True)


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the shared run, this test's to change."""
    return Path(shutil.copytree(tiny_run, tmp_path / tiny_run.name))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run faster on one thread than on two contended ones (0.26 s against 5.9 s)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
