"""`mlic demo` end to end on fake npm tarballs in the real packages' layout (no network)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

from mlic.data.formats import load_table
from mlic.demo import run_demo
from mlic.inference import Predictor
from mlic.run_folder import run_split
from tests.test_emoji import _tarball

VENDORS = ("google", "apple", "facebook", "twitter")


def _png(seed: int) -> bytes:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (24, 24), (40 * (seed % 6), 90, 200, 255)), (seed % 30, 10))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def fake_packages(folder, count: int = 12) -> None:
    codes = [f"1F6{i:02X}" for i in range(count)]
    entries = [{"hexcode": c, "label": c, "tags": ["shape", "even" if i % 2 == 0 else "odd"]}
               for i, c in enumerate(codes)]
    _tarball(folder / "emojibase-data-17.0.0.tgz",
             {"package/en/data.json": json.dumps(entries).encode()})
    datasource = [{"unified": c, "image": f"{c.lower()}.png",
                   **{f"has_img_{v}": True for v in VENDORS}} for c in codes]
    for vendor in VENDORS:
        files = {"package/emoji.json": json.dumps(datasource).encode()}
        files.update({f"package/img/{vendor}/64/{c.lower()}.png": _png(i) for i, c in enumerate(codes)})
        _tarball(folder / f"emoji-datasource-{vendor}-16.0.0.tgz", files)


def test_demo_runs_end_to_end(tmp_path, capsys):
    packages = tmp_path / "npm"
    packages.mkdir()
    fake_packages(packages)
    run = run_demo(tmp_path / "demo", epochs=1, progress=False, packages_dir=packages,
                   min_emoji_per_label=5)
    out = capsys.readouterr().out
    report = json.loads((run / "eval_test.json").read_text())
    assert report["num_images"] == 12
    # The reported mAP is the saved model's on the test split, recomputed independently: the
    # model's scores of the split's images, ranked per label by scikit-learn.
    table = load_table(run_split(run, "test")[1])
    predictor = Predictor.load(run)
    scores = predictor.scores([table.image_path(i) for i in range(len(table))])
    targets = table.with_labels(predictor.label_names, "negative").targets
    aps = [average_precision_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1])
           if targets[:, c].any()]
    assert report["mAP"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert f"{100 * report['mAP']:.2f}" in out
    assert "test mAP" in out and "Where things are" in out and str(run) in out
    assert (run / "checkpoints" / "best.safetensors").is_file()
