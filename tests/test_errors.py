"""Bad input gives one clear message naming the file or key: exit status 2, no traceback."""
from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mlic.cli import main
from mlic.run_folder import read_metrics
from conftest import TINY_BACKBONE, make_colour_images, write_plain_csv

FAST = ["--no-progress", "output_dir={out}", "name=err", "device=cpu", f"model.backbone={TINY_BACKBONE}",
        "model.pretrained=false", "model.head=linear", "loss.name=bce", "loss.params={{}}",
        "train.sam=false", "data.augment.randaugment=null", "data.image_size=32",
        "data.num_workers=0", "train.epochs=1", "train.batch_size=8"]


def cli_error(capsys, argv: list[str], *parts: str) -> str:
    """Run ``mlic argv``; expect exit status 2 and every part in the one-line error message."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Original" not in err, err
    assert err.startswith(f"mlic {argv[0]}: error: "), err
    for part in parts:
        assert str(part) in err, f"{part!r} not in {err!r}"
    return err


def train_args(tmp_path: Path, *overrides: str) -> list[str]:
    return ["train", *(a.format(out=tmp_path / "runs") for a in FAST), *overrides]


@pytest.fixture
def run(tiny_run) -> Path:
    return tiny_run  # read only: the tests that change a run change a copy


@pytest.fixture
def images(tmp_path) -> tuple[Path, list[tuple[str, list[str]]]]:
    """16 good colour images in tmp_path/images (batch size 8: every image is used each epoch)."""
    return tmp_path / "images", make_colour_images(tmp_path / "images", 16)


# ------------------------------------------------------------------------------- images

def test_missing_image_in_training_csv(tmp_path, images, capsys) -> None:
    folder, rows = images
    rows[5] = ("gone.png", ["red"])
    train = write_plain_csv(tmp_path / "train.csv", rows, "images/")
    err = cli_error(capsys, train_args(tmp_path, f"data.train={train}"),
                    folder / "gone.png", "image file not found", "1 of 16 images", "train.csv")
    assert "img005.png" not in err


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_found_while_training(tmp_path, images, capsys, workers) -> None:
    folder, rows = images
    (folder / "img007.png").write_bytes(b"this is not a PNG file at all " * 20)
    train = write_plain_csv(tmp_path / "train.csv", rows, "images/")
    # The `exists` check passes (the default, decode, would stop before training); the decoder
    # fails inside the DataLoader (in a worker process when workers=1, where torch wraps the
    # error in a traceback text).
    err = cli_error(capsys, train_args(tmp_path, f"data.train={train}", f"data.num_workers={workers}",
                                       "data.check_images=exists"),
                    folder / "img007.png", "not an image file PIL can read")
    assert "DataLoader worker" not in err and len(err.strip().splitlines()) == 1
    # Free the failed loader now (its worker takes up to 5 s to notice the shutdown), so the wait
    # is counted here rather than in whichever test happens to trigger the garbage collection.
    gc.collect()


def test_decode_check_lists_every_bad_image_up_front(tmp_path, images, capsys) -> None:
    folder, rows = images
    (folder / "img007.png").write_bytes(b"this is not a PNG file at all " * 20)
    good = (folder / "img003.png").read_bytes()
    (folder / "img011.png").write_bytes(good[:len(good) // 2])  # truncated
    train = write_plain_csv(tmp_path / "train.csv", rows, "images/")
    err = cli_error(capsys, train_args(tmp_path, f"data.train={train}", "data.check_images=decode"),
                    "2 of 16 images cannot be used", folder / "img007.png", folder / "img011.png",
                    "train.csv")
    assert "not an image file" in err and "truncated" in err
    # Nothing was trained: the check comes before the model.
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and not (runs[0] / "metrics.csv").exists()


# ------------------------------------------------------------------------------- annotations

def test_coco_unknown_category(tmp_path, images, capsys) -> None:
    folder, rows = images
    coco = {"images": [{"id": i, "file_name": f"images/{name}", "height": 32, "width": 32}
                       for i, (name, _) in enumerate(rows)],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 4, 4],
                             "iscrowd": 0},
                            {"id": 2, "image_id": 3, "category_id": 99, "bbox": [0, 0, 4, 4],
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "red", "supercategory": "colour"}]}
    path = tmp_path / "instances_train2017.json"
    path.write_text(json.dumps(coco))
    cli_error(capsys, train_args(tmp_path, f"data.train={path}"), path, "annotations[1]",
              "category_id 99")
    cli_error(capsys, ["data", "stats", path], path, "category_id 99")


def test_voc_unknown_class(tmp_path, capsys) -> None:
    voc = tmp_path / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    for image_id, name in (("000001", "dog"), ("000002", "unicorn")):
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><object><name>{name}</name>"
            "<difficult>0</difficult></object></annotation>")
        Image.new("RGB", (8, 8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    cli_error(capsys, ["data", "stats", voc], voc / "Annotations" / "000002.xml", "'unicorn'")
    cli_error(capsys, train_args(tmp_path, f"data.train={voc}"), "000002.xml", "'unicorn'")


def test_unknown_format_option_and_missing_annotations(tmp_path, capsys) -> None:
    cli_error(capsys, ["data", "stats", tmp_path / "nope.csv"], tmp_path / "nope.csv",
              "does not exist")
    cli_error(capsys, train_args(tmp_path, f"data.train={tmp_path / 'nope.csv'}"),
              tmp_path / "nope.csv", "does not exist")
    cli_error(capsys, train_args(tmp_path), "data.train is not set")


# ------------------------------------------------------------------------------- config

@pytest.mark.parametrize("override, parts", [
    ("train.lrr=0.1", ["unknown key 'train.lrr'", "did you mean 'train.lr'"]),
    ("trian.lr=0.1", ["unknown key 'trian.lr'", "did you mean 'train.lr'"]),
    ("train.epochs=abc", ["'train.epochs' must be int", "'abc'"]),
    ("train.epochs=2.5", ["'train.epochs' must be int", "2.5"]),
    ("train.lr=-1", ["'train.lr' must be > 0", "-1"]),
    ("eval.threshold=2", ["'eval.threshold' must be in [0, 1]", "2"]),
    ("train.ema=1.5", ["'train.ema'", "[0, 1]"]),
    ("data.check_images=always", ["'data.check_images' must be one of decode, exists, none"]),
    ("train=1", ["'train' is a section", "train.epochs"]),
    ("train.lr", ["not of the form key.sub=value"]),
])
def test_bad_override(tmp_path, capsys, override, parts) -> None:
    cli_error(capsys, train_args(tmp_path, "data.train=x.csv", override), *parts)
    assert not (tmp_path / "runs").exists()  # refused before a run folder is made


def test_yaml_with_unknown_key(tmp_path, capsys) -> None:
    config = tmp_path / "my_config.yaml"
    config.write_text("model:\n  backbone: resnet18\ntrian:\n  lr: 0.1\n")
    cli_error(capsys, ["train", "--config", config], "my_config.yaml", "unknown key 'trian'",
              "did you mean 'train'")
    config.write_text("model:\n  backbone: resnet18\n  haed: linear\n")
    cli_error(capsys, ["train", "--config", config], "my_config.yaml", "'model.haed'",
              "did you mean 'model.head'")
    config.write_text("model: resnet18\n")
    cli_error(capsys, ["train", "--config", config], "my_config.yaml", "'model' must be a mapping")
    config.write_text("model: [unclosed\n")
    cli_error(capsys, ["train", "--config", config], "my_config.yaml", "not valid YAML")
    config.write_text("- just\n- a list\n")
    cli_error(capsys, ["train", "--config", config], "my_config.yaml", "must be a mapping")


def test_missing_config_file(tmp_path, capsys) -> None:
    cli_error(capsys, ["train", "--config", tmp_path / "nope.yaml"], tmp_path / "nope.yaml",
              "cannot read config")


def test_train_without_anything_to_do(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train"])
    assert "--config" in str(info.value.code)


def test_resume_errors(tmp_path, run, capsys) -> None:
    cli_error(capsys, ["train", "--resume", tmp_path], tmp_path, "not a run folder")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "last.state.pt").unlink()  # killed before its first epoch was saved
    assert main(["train", "--resume", str(copy), "--no-progress"]) == 0
    assert "training starts from the beginning" in (copy / "train.log").read_text()
    assert [r["epoch"] for r in read_metrics(copy)] == ["1"]
    # What the saved optimizer and schedule depend on cannot change (OneCycle would run past its
    # end with more epochs); harmless settings can.
    copy = tmp_path / "copy2"
    shutil.copytree(run, copy)
    for override, key in (("train.epochs=3", "train.epochs"), ("train.optimizer=sgd", "train.optimizer"),
                          ("train.batch_size=4", "train.batch_size"), ("model.drop_rate=0.5", "model")):
        cli_error(capsys, ["train", "--resume", copy, override, "--no-progress"],
                  f"'{key}' cannot change when resuming")
    assert main(["train", "--resume", str(copy), "eval.batch_size=7", "data.num_workers=0",
                 "--no-progress"]) == 0


# ------------------------------------------------------------------------------- runs

def test_predict_on_missing_run(tmp_path, colour_dataset, capsys) -> None:
    image = colour_dataset["root"] / "images" / "img000.png"
    cli_error(capsys, ["predict", tmp_path / "no_such_run", image], tmp_path / "no_such_run",
              "no checkpoint found")


def test_predict_missing_image(tmp_path, run, colour_dataset, capsys) -> None:
    good = colour_dataset["root"] / "images" / "img000.png"
    cli_error(capsys, ["predict", run, good, tmp_path / "missing.png"], tmp_path / "missing.png",
              "no such file or folder")
    cli_error(capsys, ["predict", run, str(tmp_path / "*.webp")], "*.webp", "matches no file")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage" * 10)
    cli_error(capsys, ["predict", run, good, bad], bad, "not an image file")


def test_eval_with_missing_data(tmp_path, run, capsys) -> None:
    cli_error(capsys, ["eval", run, "--data", tmp_path / "missing.csv", "--device", "cpu",
                       "--no-progress"], tmp_path / "missing.csv", "does not exist")
    cli_error(capsys, ["eval", run, "--data", tmp_path, "--device", "cpu", "--no-progress"],
              tmp_path, "neither a VOC2007 nor a NUS-WIDE root")


def test_corrupt_checkpoint(tmp_path, run, colour_dataset, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    weights = copy / "checkpoints" / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    image = colour_dataset["root"] / "images" / "img000.png"
    cli_error(capsys, ["predict", copy, image], weights, "unreadable weights")
    cli_error(capsys, ["eval", copy, "--device", "cpu", "--no-progress"], weights)


def test_a_batch_of_one_is_a_clear_error_not_a_batch_norm_traceback(colour_dataset, tmp_path):
    import mlic
    from conftest import tiny_config
    from mlic.errors import ConfigError
    config = tiny_config(colour_dataset, tmp_path, epochs=1, batch_size=1)
    with pytest.raises(ConfigError, match="set train.batch_size to 2 or more"):
        mlic.train(config, progress=False, quiet=True)
