"""Property-based fuzzing of every annotation parser, of the config loader and of the metadata an
exported model carries (hypothesis).

Each example takes a valid input, mutates it (bytes flipped, cut, spliced with format tokens, lines
dropped or repeated, parsed values swapped for others) and reads it. The only acceptable outcomes
are a table / a config / a prediction, or an ``MlicError`` (named, with a message): any other
exception type is a crash a user would see as a traceback. The deadline catches hangs.

The default profile is derandomised (the same examples every run, quick: CI). For a longer hunt:
``HYPOTHESIS_PROFILE=fuzz python -m pytest tests/test_fuzz.py`` (random, 2000 examples per test).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlic.config import load_config
from mlic.data.formats import load_table
from mlic.data.table import LabelTable
from mlic.errors import MlicError
from test_formats import CSV_TEXT, coco_file, json_list, nus_folder, oi_files, voc_folder

settings.register_profile("ci", max_examples=60, derandomize=True, database=None, deadline=3000,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=2000, deadline=3000,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Pieces that mean something to the parsers: spliced in, they reach deeper than random bytes.
TOKENS = ['"', ",", "{", "}", "[", "]", ":", "null", "true", "-1", "0", "1e309", "NaN", "\n", "\r\n",
          "|", "..", "../", "/", "\\", "C:\\", "<", ">", "</object>", "<name>", "</name>", "&amp;",
          "<!DOCTYPE x [<!ENTITY a 'b'>]>", "\ufeff", "\x00", "\xff", "é", " ", "\t", "#", "'",
          "image", "labels", "unknown", "id", "image_id", "category_id", "file_name", "ImageID",
          "LabelName", "Confidence", "difficult", "classes", "path", "images", "categories"]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6),
              st.one_of(st.sampled_from(TOKENS), st.text(max_size=12)).map(str.encode)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 40)),
    st.tuples(st.just("line"), st.integers(0, 10**6), st.sampled_from(["drop", "repeat", "empty"])),
)


def mutate(data: bytes, steps: list[tuple]) -> bytes:
    for kind, at, arg in steps:
        at = at % (len(data) + 1)
        if kind == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ arg]) + data[at + 1:]
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + arg + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + arg:]
        elif kind == "line":
            lines = data.split(b"\n")
            k = at % len(lines)
            lines[k:k + 1] = {"drop": [], "repeat": [lines[k]] * 2, "empty": [b""]}[arg]
            data = b"\n".join(lines)
    return data


def csv_seed(folder: Path) -> Path:
    (folder / "labels.csv").write_text(CSV_TEXT)
    return folder / "labels.csv"


SEEDS = {  # format -> (make the valid input in a folder, the spec to read it with)
    "coco": lambda d: coco_file(d),
    "voc": lambda d: voc_folder(d),
    "nuswide": lambda d: nus_folder(d),
    "json": lambda d: json_list(d, [["a.jpg", ["dog", "person"]], ["b.png", [0]],
                                    {"path": "c.jpg", "labels": [2], "unknown": ["cat"]}]),
    "openimages": lambda d: oi_files(d),
    "csv": csv_seed,
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    out = {}
    for name, make in SEEDS.items():
        folder = tmp_path_factory.mktemp(f"seed_{name}")
        path = make(folder)
        load_table({"path": path, "format": name})  # the seeds are valid
        out[name] = folder, path
    return out


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".jpg")


def read_without_crash(spec: dict) -> None:
    try:
        table = load_table(spec)
    except MlicError as e:
        assert str(e), "an error without a message"
        return
    assert isinstance(table, LabelTable)


@pytest.mark.parametrize("fmt", list(SEEDS))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.integers(0, 100), steps=st.lists(mutation, min_size=1, max_size=4))
def test_parsers_survive_mutated_files(seeds, fmt, which, steps) -> None:
    seed_folder, seed_path = seeds[fmt]
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp) / "data"
        shutil.copytree(seed_folder, folder)
        files = files_of(folder)
        target = files[which % len(files)]
        target.write_bytes(mutate(target.read_bytes(), steps))
        read_without_crash({"path": folder / seed_path.relative_to(seed_folder), "format": fmt})


# Replacement values for JSON fields: every type, odd numbers and strings.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=8) | st.sampled_from(["../x.jpg", "/etc/passwd", "", "a|b", "C:\\x.jpg"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def replace_at(value, path: list[int], new):
    """``value`` with the node reached by following ``path`` (indices modulo sizes) replaced."""
    if not path or not isinstance(value, (list, dict)) or not value:
        return new
    if isinstance(value, list):
        k = path[0] % len(value)
        return value[:k] + [replace_at(value[k], path[1:], new)] + value[k + 1:]
    key = sorted(value, key=str)[path[0] % len(value)]
    return {**value, key: replace_at(value[key], path[1:], new)}


@pytest.mark.parametrize("fmt", ["coco", "json"])
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.lists(st.integers(0, 50), max_size=4), new=json_values)
def test_json_parsers_survive_wrong_values(seeds, fmt, path, new) -> None:
    """Structure-aware: valid JSON whose fields have the wrong type or an odd value."""
    seed_folder, seed_path = seeds[fmt]
    data = replace_at(json.loads(seed_path.read_text()), path, new)
    with tempfile.TemporaryDirectory() as temp:
        target = Path(temp) / seed_path.name
        target.write_text(json.dumps(data))
        read_without_crash({"path": target, "format": fmt})


# ----------------------------------------------------------------------------------- config

VALID_CONFIG = """\
name: fuzz
model:
  backbone: resnet18
  head: ml_decoder
  head_params: {num_heads: 4, dropout: 0.1}
loss:
  name: asl
  params: {gamma_neg: 4, clip: 0.05}
train:
  epochs: 3
  lr: 1e-4
  batch_size: 8
data:
  train: {path: train.csv, root: images}
  image_size: 64
eval:
  threshold: 0.5
"""


def load_without_crash(**kwargs) -> None:
    try:
        config = load_config(**kwargs)
    except MlicError as e:
        assert str(e), "an error without a message"
        return
    assert isinstance(config, dict)


def test_the_config_seed_is_valid(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text(VALID_CONFIG)
    assert load_config(tmp_path / "c.yaml")["train"]["lr"] == 1e-4


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(mutation, min_size=1, max_size=4))
def test_config_loader_survives_mutated_yaml(steps) -> None:
    with tempfile.TemporaryDirectory() as temp:
        path = Path(temp) / "config.yaml"
        path.write_bytes(mutate(VALID_CONFIG.encode(), steps))
        load_without_crash(path=path)


config_keys = st.sampled_from(["train.lr", "train.epochs", "eval.threshold", "loss.params",
                               "loss.params.gamma_neg", "loss.params.scale", "loss.name", "model",
                               "model.head", "model.head_params", "model.head_params.scale",
                               "data.train", "data.train.root", "data.augment.cutout", "seed",
                               "train.max_skipped_steps", "data.on_bad_image", "name"]) | st.text(max_size=12)
override_values = st.sampled_from(["", "-1", "0", "1e-4", "nan", ".inf", "abc", "[1, 2]", "{a: 1}",
                                   "{scale: -1}", "null", "true", "[unclosed", "aam", "x: [",
                                   "{gamma_neg: abc}", "1e999"]) | st.text(max_size=10)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(st.tuples(config_keys, st.sampled_from(["=", "", "=="]), override_values),
                      min_size=1, max_size=4),
       structure=st.lists(st.tuples(st.lists(st.integers(0, 30), max_size=3), json_values), max_size=2))
def test_config_loader_survives_bad_overrides_and_values(items, structure) -> None:
    base = yaml.safe_load(VALID_CONFIG)
    for path, new in structure:  # wrong types deep inside the YAML as well
        base = replace_at(base, path, new)
    overrides = [f"{key}{sep}{value}" for key, sep, value in items]
    with tempfile.TemporaryDirectory() as temp:
        path = Path(temp) / "config.yaml"
        path.write_text(yaml.safe_dump(base) if isinstance(base, dict) else json.dumps(base))
        load_without_crash(path=path, overrides=overrides)


# --------------------------------------------------------------------- exported-model metadata

def tiny_onnx_model():
    """A four-label graph as mlic exports it (images -> probabilities), made by hand: quick."""
    import onnx
    from onnx import TensorProto, helper
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], [0.1 * k for k in range(12)])
    nodes = [helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["probabilities"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                      ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


SEED_METADATA = {
    "label_names": ["cat", "dog", "caf\u00e9", "=SUM(1)"],
    "thresholds": [0.5, 0.4, 0.6, 0.5],
    "preprocessing": {"image_size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                      "interpolation": "bilinear"},
    "model": {"backbone": "resnet18", "head": "linear", "num_classes": 4},
    "export": {"precision": "fp32", "inputs": {"images": "..."}, "outputs": {"probabilities": "..."},
               "calibration": None},
}


def predict_without_crash(entries: dict[str, str], folder: Path) -> None:
    """Write ``entries`` as the model's mlic metadata, load it and predict one image."""
    import numpy as np
    import onnx

    from mlic.inference import Predictor
    model = tiny_onnx_model()
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    try:
        predictor = Predictor.load(path)
        results = predictor.predict([np.full((20, 24, 3), 128, dtype=np.uint8)])
    except MlicError as e:
        assert str(e), "an error without a message"
        return
    assert len(results) == 1 and set(results[0]["labels"]) <= set(predictor.label_names)


def test_the_metadata_seed_is_valid(tmp_path) -> None:
    from mlic.export.metadata import to_strings
    predict_without_crash(to_strings(SEED_METADATA), tmp_path)
    from mlic.inference import Predictor
    assert Predictor.load(tmp_path / "model.onnx").label_names[2] == "caf\u00e9"


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=4), new=json_values)
def test_runtimes_survive_wrong_metadata_values(path, new) -> None:
    """Structure-aware: valid JSON metadata whose entries have the wrong type or an odd value."""
    from mlic.export.metadata import to_strings
    with tempfile.TemporaryDirectory() as temp:
        predict_without_crash(to_strings(replace_at(SEED_METADATA, path, new)), Path(temp))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(SEED_METADATA)), steps=st.lists(mutation, min_size=1, max_size=4))
def test_runtimes_survive_mutated_metadata_text(key, steps) -> None:
    """One entry's JSON text mutated (bytes flipped, cut, format tokens spliced in)."""
    from mlic.export.metadata import to_strings
    entries = to_strings(SEED_METADATA)
    text = mutate(entries[f"mlic.{key}"].encode(), steps)
    entries[f"mlic.{key}"] = text.decode("utf-8", "replace")  # ONNX keeps UTF-8 text
    with tempfile.TemporaryDirectory() as temp:
        predict_without_crash(entries, Path(temp))
