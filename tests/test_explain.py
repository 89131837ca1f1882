"""Explanation maps (mlic/explain.py, ``mlic explain``).

The colour images hold one square per colour, in a known quadrant (sorted colour order: top left,
top right, bottom left), so a map can be checked against where the answer is. A model trained a few
epochs at 128 px (a 4 x 4 feature map; at 32 px the tiny backbone's map is a single place) learns
them; its maps must sit on the square, and masking the square they point to must take the label's
probability and the map's value there down.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mlic
from mlic.cli import main
from mlic.errors import ConfigError
from mlic.explain import Explainer, explain, file_name
from mlic.models import create_model
from mlic.report import teaching_examples
from tests.conftest import COLOURS, TINY_BACKBONE, tiny_config

NAMES = list(COLOURS)
SMALL = {"ml_decoder": {"embed_dim": 32, "num_heads": 2, "ff_dim": 32},
         "query2label": {"hidden_dim": 32, "num_heads": 2, "ff_dim": 32},
         "ctran": {"hidden_dim": 32, "num_heads": 2, "layers": 1},
         "linear": {}}


def quadrant(labels: list[str], label: str) -> tuple[int, int]:
    """(row, column) of the label's 16 px square in a colour image (conftest's layout)."""
    return divmod(sorted(labels).index(label), 2)


def cell_means(heat: np.ndarray) -> np.ndarray:
    return heat.reshape(2, 16, 2, 16).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def trained_run(colour_dataset, tmp_path_factory) -> Path:
    config = tiny_config(colour_dataset, tmp_path_factory.mktemp("explain_runs"), epochs=8)
    config["data"]["image_size"] = 128
    return mlic.train(config, progress=False, quiet=True)


def test_maps_have_the_image_size_differ_between_labels_and_lie_in_0_1():
    image = Image.new("RGB", (50, 30), "white")
    image.paste((220, 30, 30), (0, 0, 20, 15))
    for head, params in SMALL.items():
        model = create_model(TINY_BACKBONE, 4, head=head, image_size=128, head_params=params)
        explainer = Explainer(model, NAMES)
        maps = explainer(image, ["red", "green", "blue"])
        assert explainer.method == ("recipro_cam" if head == "linear" else "attention")
        assert [m.label for m in maps] == ["red", "green", "blue"]
        for m in maps:
            assert m.heat.shape == (30, 50) and m.heat.min() >= 0 and m.heat.max() <= 1
            assert 0 <= m.probability <= 1
        assert np.abs(maps[0].heat - maps[1].heat).mean() > 1e-3, head


def test_ml_decoder_labels_of_one_query_share_its_map():
    model = create_model(TINY_BACKBONE, 4, head="ml_decoder", image_size=128,
                         head_params={**SMALL["ml_decoder"], "num_queries": 2})
    maps = Explainer(model, NAMES)(Image.new("RGB", (64, 64), "gray"), NAMES)
    assert np.allclose(maps[0].heat, maps[1].heat) and np.allclose(maps[2].heat, maps[3].heat)


def test_a_map_sits_on_its_square_and_masking_the_square_takes_the_label_away(
        trained_run, colour_dataset):
    hits = total = 0
    for on_square, found, after, before_there, after_there in masked_maps(
            Explainer.load(trained_run), colour_dataset):
        hits += on_square
        total += 1
        assert after.probability < found.probability
        assert after_there < before_there
    assert hits / total >= 0.9, f"{hits} of {total} maps on their square"


def masked_maps(explainer, colour_dataset, images=12):
    """Per (image, true label) of the first test images: whether the map's hottest 16 px cell is
    the label's square, the map, the map with that cell painted white, and the cell's mean heat
    before and after."""
    rows = [line.split(",") for line in colour_dataset["test"].read_text().splitlines()[1:]]
    for name, labels in rows[:images]:
        labels = labels.split("|")
        image = Image.open(colour_dataset["root"] / name).convert("RGB")
        for label in labels:
            (found,) = explainer(image, [label])
            means = cell_means(found.heat)
            row, column = np.unravel_index(np.argmax(means), means.shape)
            masked = np.asarray(image).copy()
            masked[16 * row:16 * row + 16, 16 * column:16 * column + 16] = 255
            (after,) = explainer(Image.fromarray(masked), [label])
            yield ((row, column) == quadrant(labels, label), found, after, means[row, column],
                   cell_means(after.heat)[row, column])


@pytest.mark.slow
def test_attention_maps_sit_on_their_square_and_follow_masking(colour_dataset, tmp_path):
    """Query2Label's label queries: the same checks as Recipro-CAM's, with the margins one trained
    model leaves (on 12 images: 19 of 22 maps on their square, every probability lowered by
    masking, the map's value there lowered in 17 of 22)."""
    config = tiny_config(colour_dataset, tmp_path, epochs=8)
    config["data"]["image_size"] = 128
    config["model"].update(head="query2label", head_params=SMALL["query2label"])
    explainer = Explainer.load(mlic.train(config, progress=False, quiet=True))
    assert explainer.method == "attention"
    hits = lowered = map_lowered = total = 0
    for on_square, found, after, before_there, after_there in masked_maps(explainer, colour_dataset):
        hits += on_square
        lowered += after.probability < found.probability
        map_lowered += after_there < before_there
        total += 1
    assert hits >= 0.7 * total and lowered >= 0.9 * total and map_lowered >= 0.6 * total, (
        hits, lowered, map_lowered, total)

def test_default_labels_are_the_predicted_ones(trained_run, colour_dataset):
    explainer = Explainer.load(trained_run)
    image = Image.open(colour_dataset["root"] / "test_images" / "img000.png")
    maps = explainer(image)
    assert maps and all(m.probability >= 0.5 for m in maps)
    assert [m.probability for m in maps] == sorted((m.probability for m in maps), reverse=True)


def test_unknown_label_and_method_are_one_line_errors(trained_run, colour_dataset, capsys):
    image = colour_dataset["root"] / "test_images" / "img000.png"
    with pytest.raises(ConfigError, match="'rde' is not one of the model's 4 labels.*'red'"):
        Explainer.load(trained_run)(image, ["rde"])
    with pytest.raises(ConfigError, match="has no attention layer"):
        Explainer.load(trained_run, method="attention")
    assert main(["explain", str(trained_run), str(image), "--labels", "nope"]) == 2
    assert "mlic explain: error: label 'nope'" in capsys.readouterr().err
    assert main(["explain", str(trained_run), str(image.parent / "missing.png")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    checkpoint = trained_run / "checkpoints" / "best.json"  # not a run folder: say where maps go
    assert main(["explain", str(checkpoint), str(image)]) == 2
    assert "not a run folder; say where the maps go (--output)" in capsys.readouterr().err


def test_cli_writes_overlays_and_an_index(trained_run, colour_dataset, tmp_path, capsys):
    images = colour_dataset["root"] / "test_images"
    out = tmp_path / "maps"
    assert main(["explain", str(trained_run), str(images / "img000.png"), str(images / "img001.png"),
                 "--labels", "red,blue", "-o", str(out), "--tag", "last"]) == 0
    assert "written: 4 maps" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    assert [(Path(e["image"]).name, e["label"]) for e in index] == [
        ("img000.png", "red"), ("img000.png", "blue"), ("img001.png", "red"), ("img001.png", "blue")]
    for entry in index:
        with Image.open(out / entry["file"]) as overlay:
            assert overlay.size == (32, 32) and overlay.mode == "RGB"


def test_hostile_names_make_safe_file_names():
    assert file_name("../../etc/passwd") == "etc_passwd"
    assert file_name("<b>&x") == "b_x"
    assert file_name("..") == "_"
    assert "/" not in file_name("a/b\\c") and len(file_name("x" * 500)) <= 60


def test_explain_into_the_run_folder_shows_in_its_report(trained_run, colour_dataset, tmp_path):
    import shutil
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    explain(run, [colour_dataset["root"] / "test_images" / "img002.png"], ["green"])
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "img002.png" in page  # on its gallery card, or apart if the gallery lacks it
    assert ("map: green" in page) != ("Other explanation maps" in page)


def test_explain_without_images_maps_the_gallery_lessons(trained_run, tmp_path, capsys):
    import shutil
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    lessons = teaching_examples(run)
    assert lessons and all(Path(path).is_file() and labels for path, labels in lessons)
    assert main(["explain", str(run)]) == 0
    index = json.loads((run / "explain" / "index.json").read_text())
    assert {(Path(e["image"]).name, e["label"]) for e in index} == {
        (Path(path).name, label) for path, labels in lessons for label in labels}
    page = (run / "report.html").read_text()
    assert 0 < page.count('class="map"') <= 2 * page.count('class="card"')
    (run / "predictions_test.npz").unlink()
    (run / "predictions_val.npz").unlink()
    assert main(["explain", str(run)]) == 2
    assert "no saved scores of an evaluation" in capsys.readouterr().err
