"""End to end, once per annotation format: write a tiny dataset in the format's true on-disk layout,
train one epoch, then use the run through the CLI (eval, predict, data stats) and the Python API.

Images are the coloured squares of conftest (label = colour). Each image also gets a unique grey
2x2 corner stamp, so no two images are identical and the model's float scores have no ties; that
lets the mAP of the run be checked against sklearn's ``average_precision_score``.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import average_precision_score

import mlic
from mlic.cli import main
from mlic.data.formats import load_table
from mlic.data.transforms import eval_transform
from mlic.engine.checkpoint import load_model
from mlic.engine.evaluate import predict_scores
from mlic.engine.splits import make_loader
from mlic.run_folder import read_metrics
from conftest import COLOURS, SIMPLE_RECIPE, TINY_BACKBONE, make_colour_images

FORMATS = ["csv", "coco", "voc", "nuswide", "json", "openimages"]
N_TRAIN, N_TEST = 32, 16
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


# ------------------------------------------------------------------------------ images

def colour_images(staging: Path, count: int, seed: int) -> list[tuple[Image.Image, list[str]]]:
    """``count`` distinct colour-square images (PIL, in memory) with their colour names."""
    rows = make_colour_images(staging, count, seed)
    out = []
    for i, (name, labels) in enumerate(rows):
        array = np.array(Image.open(staging / name).convert("RGB"))
        array[30:32, 30:32] = (i * 37 + seed * 101) % 200  # a unique stamp outside every square
        out.append((Image.fromarray(array), labels))
    return out


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95)
    else:
        image.save(path)
    return path


@dataclass
class Case:
    """A dataset written in one format: its split specs and what was written."""
    fmt: str
    train: object                       # data.train spec
    test: object                        # data.test (and data.val) spec
    test_images: list[Path]             # in split order
    test_labels: list[list[str]]        # positive label names per test image
    train_labels: list[list[str]]
    predict_dir: Path                   # a folder of images for `mlic predict`
    stats_args: list[str] = field(default_factory=list)  # `mlic data stats` of the train split


# ------------------------------------------------------------------------------ writers

def write_csv(root: Path, train, test) -> Case:
    def split(name: str, items) -> tuple[Path, list[Path]]:
        paths = [save(im, root / f"{name}_images" / f"img{i:03d}.png") for i, (im, _) in enumerate(items)]
        with open(root / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "labels"])
            for p, (_, labels) in zip(paths, items):
                writer.writerow([f"{name}_images/{p.name}", "|".join(labels)])
        return root / f"{name}.csv", paths

    train_csv, _ = split("train", train)
    test_csv, test_paths = split("test", test)
    return Case("csv", str(train_csv), str(test_csv), test_paths, [l for _, l in test],
                [l for _, l in train], root / "test_images", [str(train_csv)])


COCO_IDS = {"red": 44, "green": 3, "blue": 18, "yellow": 1}  # not contiguous, not in colour order


def write_coco(root: Path, train, test) -> Case:
    coco = root / "coco"

    def split(name: str, items, first_id: int) -> tuple[Path, list[Path]]:
        images, annotations, paths = [], [], []
        for i, (im, labels) in enumerate(items):
            image_id = first_id + 7 * i
            file_name = f"{image_id:012d}.jpg"
            paths.append(save(im, coco / name / file_name))
            images.append({"id": image_id, "file_name": file_name, "height": 32, "width": 32,
                           "license": 1, "coco_url": "", "date_captured": "2013-11-14 11:18:45"})
            for k, colour in enumerate(labels):
                y, x = divmod(k, 2)
                box = [x * 16 + 2.0, y * 16 + 2.0, 12.0, 12.0]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id,
                    "category_id": COCO_IDS[colour], "bbox": box, "area": 144.0, "iscrowd": 0,
                    "segmentation": [[box[0], box[1], box[0] + 12, box[1], box[0] + 12, box[1] + 12]]})
        data = {"info": {"description": "colours", "year": 2017},
                "licenses": [{"id": 1, "name": "x", "url": ""}],
                "images": images, "annotations": annotations,
                "categories": [{"supercategory": "colour", "id": cid, "name": colour}
                               for colour, cid in COCO_IDS.items()]}
        path = coco / "annotations" / f"instances_{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return path, paths

    train_json, _ = split("train2017", train, 9)
    test_json, test_paths = split("val2017", test, 139)
    return Case("coco", {"format": "coco", "path": str(train_json)}, str(test_json), test_paths,
                [l for _, l in test], [l for _, l in train], coco / "val2017", [str(train_json)])


VOC_NAMES = {"red": "cat", "green": "dog", "blue": "car", "yellow": "person"}


def voc_annotation(filename: str, objects: list[tuple[str, int, list[int]]]) -> str:
    body = "".join(
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>0</truncated>\n\t\t<difficult>{difficult}</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{b[0]}</xmin>\n\t\t\t<ymin>{b[1]}</ymin>\n"
        f"\t\t\t<xmax>{b[2]}</xmax>\n\t\t\t<ymax>{b[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for name, difficult, b in objects)
    return ("<annotation>\n\t<folder>VOC2007</folder>\n"
            f"\t<filename>{filename}</filename>\n"
            "\t<source>\n\t\t<database>The VOC2007 Database</database>\n"
            "\t\t<annotation>PASCAL VOC2007</annotation>\n\t</source>\n"
            "\t<size>\n\t\t<width>32</width>\n\t\t<height>32</height>\n\t\t<depth>3</depth>\n"
            "\t</size>\n\t<segmented>0</segmented>\n" + body + "</annotation>\n")


def write_voc(root: Path, train, test) -> Case:
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    counter = iter(range(1, 10_000))

    def split(name: str, items) -> tuple[list[Path], list[list[str]]]:
        ids, paths, labels_out = [], [], []
        for i, (im, colours) in enumerate(items):
            image_id = f"{next(counter) * 2:06d}"
            paths.append(save(im, voc / "JPEGImages" / f"{image_id}.jpg"))
            objects = []
            for k, colour in enumerate(colours):
                y, x = divmod(k, 2)
                objects.append((VOC_NAMES[colour], 0, [x * 16 + 3, y * 16 + 3, x * 16 + 14, y * 16 + 14]))
            if i % 5 == 0:  # a difficult chair: unknown (-1), not a positive
                objects.append(("chair", 1, [30, 30, 32, 32]))
            (voc / "Annotations" / f"{image_id}.xml").write_text(
                voc_annotation(f"{image_id}.jpg", objects))
            ids.append(image_id)
            labels_out.append([VOC_NAMES[c] for c in colours])
        (voc / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        return paths, labels_out

    _, train_labels = split("trainval", train)
    test_paths, test_labels = split("test", test)
    return Case("voc", {"format": "voc", "path": str(voc)}, {"path": str(voc), "split": "test"},
                test_paths, test_labels, train_labels, voc / "JPEGImages", [str(voc)])


NUS_NAMES = {"red": "flowers", "green": "grass", "blue": "sky", "yellow": "sun"}
NUS_CONCEPTS = ["flowers", "grass", "sky", "sun", "zebra"]  # zebra: never positive


def write_nuswide(root: Path, train, test) -> Case:
    nus = root / "NUS-WIDE"
    for sub in ("ImageList", "TrainTestLabels"):
        (nus / sub).mkdir(parents=True)
    (nus / "Concepts81.txt").write_bytes("".join(f"{c}\r\n" for c in NUS_CONCEPTS).encode())

    def split(name: str, items, offset: int) -> tuple[list[Path], list[list[str]]]:
        lines, paths, labels_out = [], [], []
        for i, (im, colours) in enumerate(items):
            concepts = [NUS_NAMES[c] for c in colours]
            folder, file = concepts[0], f"{i + 1:04d}_{2124494179 + offset + i}.jpg"
            paths.append(save(im, nus / "Flickr" / folder / file))
            lines.append(f"{folder}\\{file}")  # Windows paths, CRLF, as in the official release
            labels_out.append(concepts)
        (nus / "ImageList" / f"{name}Imagelist.txt").write_bytes(
            "".join(f"{line}\r\n" for line in lines).encode())
        for concept in NUS_CONCEPTS:
            values = [int(concept in labels) for labels in labels_out]
            (nus / "TrainTestLabels" / f"Labels_{concept}_{name}.txt").write_bytes(
                "".join(f"{v} \r\n" for v in values).encode())
        return paths, labels_out

    _, train_labels = split("Train", train, 0)
    test_paths, test_labels = split("Test", test, 1000)
    return Case("nuswide", str(nus), {"format": "nuswide", "path": str(nus), "split": "Test"},
                test_paths, test_labels, train_labels, nus / "Flickr", [str(nus)])


def write_json(root: Path, train, test) -> Case:
    classes = sorted(COLOURS)[::-1]  # not sorted: the file's order is the label order

    def split(name: str, items) -> tuple[Path, list[Path]]:
        entries, paths = [], []
        for i, (im, labels) in enumerate(items):
            rel = f"img/{name}/{i:05d}.jpg"
            paths.append(save(im, root / rel))
            if i % 3 == 0:  # object form, labels as indices
                entries.append({"path": rel, "labels": [classes.index(n) for n in labels]})
            else:           # pair form, labels as names
                entries.append([rel, labels])
        path = root / f"{name}.json"
        path.write_text(json.dumps({"classes": classes, "images": entries}))
        return path, paths

    train_json, _ = split("train", train)
    test_json, test_paths = split("test", test)
    return Case("json", str(train_json), {"format": "json", "path": str(test_json)}, test_paths,
                [l for _, l in test], [l for _, l in train], root / "img" / "test",
                [str(train_json)])


OI_MIDS = {"red": "/m/0c9ph5", "green": "/m/05s2s", "blue": "/m/01bqvp", "yellow": "/m/088fh"}
OI_DESCRIPTIONS = [("/m/011k07", "Tortoise"), ("/m/0c9ph5", "Red thing"), ("/m/05s2s", "Plant"),
                   ("/m/01bqvp", "Sky"), ("/m/088fh", "Yellow, bright")]  # a comma: quoted in CSV


def write_openimages(root: Path, train, test) -> Case:
    oi = root / "openimages"
    oi.mkdir(parents=True)
    with open(oi / "oidv6-class-descriptions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["LabelName", "DisplayName"])
        writer.writerows(OI_DESCRIPTIONS)
    names = dict(OI_DESCRIPTIONS)
    order = list(COLOURS)

    def split(name: str, items, seed: int) -> tuple[Path, list[Path], list[list[str]]]:
        rows, paths, labels_out = [], [], []
        for i, (im, colours) in enumerate(items):
            image_id = f"{(seed * 1_000_003 + i * 7_919) & 0xFFFFFFFFFFFF:016x}"
            paths.append(save(im, oi / name / f"{image_id}.jpg"))
            for colour in colours:
                rows.append([image_id, "verification", OI_MIDS[colour], "1"])
            absent = [c for c in order if c not in colours]
            if absent:  # one verified negative; the other absent colours stay unknown
                rows.append([image_id, "crowdsource-verification", OI_MIDS[absent[i % len(absent)]], "0"])
            labels_out.append([names[OI_MIDS[c]] for c in colours])
        path = oi / f"{name}-annotations-human-imagelabels.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["ImageID", "Source", "LabelName", "Confidence"])
            writer.writerows(rows)
        return path, paths, labels_out

    train_csv, _, train_labels = split("train", train, 1)
    test_csv, test_paths, test_labels = split("test", test, 2)
    return Case("openimages", {"format": "openimages", "path": str(train_csv), "root": str(oi / "train")},
                {"path": str(test_csv), "root": str(oi / "test")}, test_paths, test_labels,
                train_labels, oi / "test", [str(train_csv), "--option", f"root={oi / 'train'}"])


WRITERS = {"csv": write_csv, "coco": write_coco, "voc": write_voc, "nuswide": write_nuswide,
           "json": write_json, "openimages": write_openimages}


# ------------------------------------------------------------------------------ fixtures

def config_for(case: Case, out: Path, **train) -> dict:
    return {
        "output_dir": str(out), "name": case.fmt, "device": "cpu",
        "data": {"train": case.train, "val": case.test, "test": case.test, "image_size": 32,
                 "num_workers": 0, "augment": dict(SIMPLE_RECIPE["augment"])},
        "model": dict(SIMPLE_RECIPE["model"]),
        "loss": {"name": "bce", "params": {}},
        "train": {**SIMPLE_RECIPE["train"], "epochs": 1, "batch_size": 16, "lr": 0.01, **train},
        "eval": {"batch_size": 32},
    }


@pytest.fixture(scope="module", params=FORMATS)
def trained(request, tmp_path_factory) -> tuple[Case, Path]:
    fmt = request.param
    root = tmp_path_factory.mktemp(fmt)
    train = colour_images(root / "_staging_train", N_TRAIN, seed=0)
    test = colour_images(root / "_staging_test", N_TEST, seed=1)
    case = WRITERS[fmt](root / "data", train, test)
    run = mlic.train(config_for(case, root / "runs"), progress=False, quiet=True)
    return case, run


def expected_names(case: Case) -> set[str]:
    return {n for labels in case.train_labels for n in labels}


# ------------------------------------------------------------------------------ tests

def test_tables_match_what_was_written(trained) -> None:
    case, _ = trained
    for spec, labels in ((case.train, case.train_labels), (case.test, case.test_labels)):
        table = load_table(spec)
        assert len(table) == len(labels)
        assert [sorted(table.labels_of(i)) for i in range(len(table))] == [sorted(l) for l in labels]
        assert all(table.image_path(i).is_file() for i in range(len(table)))
    test = load_table(case.test)
    assert [test.image_path(i) for i in range(len(test))] == case.test_images


def test_run_folder(trained) -> None:
    case, run = trained
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["train"] == case.train and config["model"]["backbone"] == TINY_BACKBONE
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == ["1"]
    assert rows[0]["steps"] == str(N_TRAIN // 16) and float(rows[0]["train_loss"]) > 0
    assert 0 <= float(rows[0]["val_mAP"]) <= 1 and rows[0]["selected"] == "model"
    ckpt = run / "checkpoints"
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json", "last.state.pt"):
        assert (ckpt / name).is_file(), name
    best = json.loads((ckpt / "best.json").read_text())
    assert set(expected_names(case)) <= set(best["label_names"])
    assert best["model"]["backbone"] == TINY_BACKBONE and best["epoch"] == 1
    report = json.loads((run / "eval_test.json").read_text())
    assert report["num_images"] == N_TEST and 0 <= report["mAP"] <= 1
    assert report["mAP"] == pytest.approx(float(rows[0]["val_mAP"]), abs=1e-6)  # val == test here
    assert "done:" in (run / "train.log").read_text()


def sklearn_map(scores: np.ndarray, targets: np.ndarray) -> tuple[float, dict[int, float]]:
    """Macro AP over the classes with a known positive; unknown (-1) entries are left out."""
    columns = [k for k in range(targets.shape[1]) if (targets[:, k] == 1).any()]
    per_class = {}
    for k in columns:
        known = targets[:, k] >= 0
        per_class[k] = average_precision_score(targets[known, k], scores[known, k])
    if not (targets < 0).any():  # the one-call form must agree
        macro = average_precision_score(targets[:, columns], scores[:, columns], average="macro")
        assert macro == pytest.approx(np.mean(list(per_class.values())), abs=1e-12)
    return float(np.mean(list(per_class.values()))), per_class


def test_map_equals_sklearn(trained) -> None:
    """On the logits, which mAP ranks: one of these runs has two float32 probabilities that tie
    (sklearn would group them) where the logits differ."""
    case, run = trained
    model, meta = load_model(run)
    names = meta["label_names"]
    table = load_table(case.test).with_labels(names, "negative")
    loader = make_loader(table, eval_transform(model.preprocessing), 32, 0, False)
    _, scores, targets = predict_scores(model, loader, torch.device("cpu"), progress=False)
    for k in range(targets.shape[1]):  # ties between a positive and a negative would make AP ambiguous
        known = targets[:, k] >= 0
        if (targets[known, k] == 1).any() and len(np.unique(scores[known, k])) < known.sum():
            pytest.skip(f"tied scores in class {names[k]}")
    expected, per_class = sklearn_map(scores, targets)
    report = json.loads((run / "eval_test.json").read_text())
    assert report["mAP"] == pytest.approx(expected, abs=1e-9)
    for k, ap in per_class.items():
        assert report["per_class"][k]["label"] == names[k]
        assert report["per_class"][k]["AP"] == pytest.approx(ap, abs=1e-9)
    assert [r["label"] for r in report["per_class"] if r["AP"] is None] == report["empty_classes"]


def test_cli_eval(trained, capsys) -> None:
    case, run = trained
    before = json.loads((run / "eval_test.json").read_text())["mAP"]
    assert main(["eval", str(run), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"mAP (\d+\.\d\d)\s+over (\d+) images", out)
    assert match, out
    assert int(match.group(2)) == N_TEST
    assert float(match.group(1)) == pytest.approx(100 * before, abs=0.006)
    assert "written:" in out and "CF1" in out and "OF1" in out
    after = json.loads((run / "eval_test.json").read_text())
    assert after["split"] == "test" and after["mAP"] == pytest.approx(before, abs=1e-9)
    assert (run / "per_class_ap_test.csv").is_file()


def predict_images(case: Case) -> list[Path]:
    return sorted(p for p in case.predict_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def test_cli_predict_csv(trained, tmp_path, capsys) -> None:
    case, run = trained
    out = tmp_path / "out.csv"
    assert main(["predict", str(run), str(case.predict_dir), "--format", "csv", "-o", str(out)]) == 0
    images = predict_images(case)
    assert f"{len(images)} predictions written" in capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    predictor = mlic.Predictor.load(run)
    assert rows[0] == ["image", "labels", *predictor.label_names]
    assert [Path(r[0]) for r in rows[1:]] == images
    scores = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert ((scores >= 0) & (scores <= 1)).all()
    assert np.allclose(scores, predictor.scores(images), atol=1e-6)
    # The model's thresholds: per class, chosen on the validation split at the end of training.
    cuts = np.broadcast_to(np.asarray(predictor.thresholds, dtype=np.float64), scores.shape[1:])
    for row, s in zip(rows[1:], scores):
        labels = row[1].split("|") if row[1] else []
        assert set(labels) <= set(predictor.label_names)
        # Decided by those thresholds; compare away from the cut to allow for rounding.
        assert {n for n, v, t in zip(predictor.label_names, s, cuts) if v >= t + 1e-5} <= set(labels)
        above = {n for n, v, t in zip(predictor.label_names, s, cuts) if v >= t - 1e-5}
        # At least one label per image (min_labels): its best when no score reaches its threshold.
        assert set(labels) <= above or labels == [predictor.label_names[int(np.argmax(s))]]


def test_cli_predict_json(trained, capsys) -> None:
    case, run = trained
    images = case.test_images[:3]
    assert main(["predict", str(run), *map(str, images), "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    predictor = mlic.Predictor.load(run)
    assert [r["image"] for r in results] == [str(p) for p in images]
    for r in results:
        assert len(r["scores"]) == min(10, len(predictor.label_names))
        values = list(r["scores"].values())
        assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)
        assert set(r["scores"]) <= set(predictor.label_names)
        cut = dict(zip(predictor.label_names, np.broadcast_to(
            np.asarray(predictor.thresholds, dtype=np.float64), (len(predictor.label_names),))))
        above = [n for n, v in r["scores"].items() if v >= cut[n]]  # the model's thresholds
        assert r["labels"] == (above or list(r["scores"])[:1])  # at least one label per image
    assert main(["predict", str(run), str(images[0]), "--top", "0"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["scores"]) == len(predictor.label_names)


def test_predictor_api(trained) -> None:
    case, run = trained
    predictor = mlic.Predictor.load(run)
    path = case.test_images[0]
    image = Image.open(path).convert("RGB")
    results = predictor.predict([path, image, np.asarray(image)])
    assert [r["image"] for r in results] == [str(path), None, None]
    assert results[0]["scores"] == pytest.approx(results[1]["scores"], abs=1e-6)
    assert results[1]["scores"] == pytest.approx(results[2]["scores"], abs=1e-6)
    assert set(results[0]["scores"]) == set(predictor.label_names)
    single = predictor.predict(path)
    assert len(single) == 1 and single[0]["labels"] == results[0]["labels"]
    # Also from the checkpoint files themselves.
    same = mlic.Predictor.load(run / "checkpoints" / "best.safetensors").scores([path])
    assert np.array_equal(same, predictor.scores([path]))


def test_cli_data_stats(trained, capsys) -> None:
    case, _ = trained
    assert main(["data", "stats", *case.stats_args]) == 0
    out = capsys.readouterr().out
    assert f"images: {N_TRAIN}" in out
    counts: dict[str, int] = {}
    for labels in case.train_labels:
        for n in labels:
            counts[n] = counts.get(n, 0) + 1
    for name, count in counts.items():
        assert re.search(rf"^\s+{re.escape(name)}\s+{count}\s+{100 * count / N_TRAIN:.1f}%$", out,
                         re.MULTILINE), (name, count, out)


@pytest.mark.slow  # a fresh interpreter imports torch: seconds
def test_python_m_mlic_help() -> None:
    result = subprocess.run([sys.executable, "-m", "mlic", "--help"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("train", "eval", "predict", "data", "demo"):
        assert command in result.stdout
    assert "Traceback" not in result.stderr
