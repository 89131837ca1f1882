"""Robustness (issue 7): bad images, bad annotations, config values, NaN losses, crash safety,
untrusted checkpoint files. Each bad input must give a message naming the file (or key) and the
problem; what can be survived must be."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mlic
from mlic.atomic import TEMP_PREFIX, atomic_write
from mlic.cli import main
from mlic.data.dataset import MultiLabelDataset
from mlic.data.images import load_rgb
from mlic.data.formats import load_table
from mlic.data.validate import validate_images
from mlic.engine import checkpoint as ckpt
from mlic.engine.nonfinite import NonFiniteGuard, NonFiniteLoss
from mlic.run_folder import read_metrics
from mlic.errors import DataError
from conftest import make_colour_images, tiny_config, write_plain_csv
from test_errors import cli_error, train_args
from test_training import assert_same_tensors, only_run, rows_without_time


# ------------------------------------------------------------------------- image decoding

def saved(image: Image.Image, fmt: str, **options) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    buffer.seek(0)
    return buffer


def decode(tmp_path: Path, image: Image.Image, fmt: str, name: str, **options) -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(saved(image, fmt, **options).getvalue())
    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    return np.asarray(rgb).astype(int)


def test_image_modes_decode_to_the_expected_rgb(tmp_path) -> None:
    gray = Image.new("L", (4, 4), 77)
    assert (decode(tmp_path, gray, "PNG", "gray.png") == 77).all()
    # 16-bit: 0x3A00 -> top byte 0x3A = 58.
    deep = Image.fromarray(np.full((4, 4), 0x3A00, dtype=np.uint16))
    assert (decode(tmp_path, deep, "PNG", "deep.png") == 58).all()
    # Palette with a transparent entry: composited on white, not black.
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] + [200, 100, 50] * 255)
    palette.putpixel((0, 0), 1)
    out = decode(tmp_path, palette, "PNG", "palette.png", transparency=0)
    assert out[0, 0].tolist() == [200, 100, 50] and out[3, 3].tolist() == [255, 255, 255]
    # RGBA at half opacity over white: 255 + (100 - 255) * 128/255.
    rgba = Image.new("RGBA", (4, 4), (100, 0, 255, 128))
    expected = [round(255 + (c - 255) * 128 / 255) for c in (100, 0, 255)]
    assert np.abs(decode(tmp_path, rgba, "PNG", "rgba.png")[1, 1] - expected).max() <= 1
    # CMYK: pure cyan ink is (0, 255, 255) in RGB.
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    assert np.abs(decode(tmp_path, cmyk, "JPEG", "cmyk.jpg", quality=100)[4, 4]
                  - [0, 255, 255]).max() <= 3
    assert (decode(tmp_path, Image.new("1", (4, 4), 1), "PNG", "bits.png") == 255).all()
    assert (decode(tmp_path, Image.new("LA", (4, 4), (40, 255)), "PNG", "la.png") == 40).all()


def test_exif_rotation_is_applied(tmp_path) -> None:
    # A 6x2 image whose left column is red; EXIF orientation 6 = "rotate 90 degrees clockwise to
    # display", so the displayed image is 2x6 (w x h) with the red column on top.
    image = Image.new("RGB", (6, 2), (0, 0, 255))
    for y in range(2):
        image.putpixel((0, y), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = decode(tmp_path, image, "PNG", "rotated.png", exif=exif.tobytes())
    assert rgb.shape == (6, 2, 3)
    assert rgb[0, :, 0].tolist() == [255, 255] and rgb[5, :, 2].tolist() == [255, 255]


BAD_FILES = {
    "truncated.jpg": ("truncated", lambda good: good[:len(good) // 2]),
    "text.png": ("not an image file", lambda good: b"hello, I am a text file\n" * 10),
    "empty.jpg": ("not an image file", lambda good: b""),
    "broken_header.jpg": ("not an image file", lambda good: good[:2] + bytes(50) + good[52:]),
    # A PNG's chunks carry CRCs: damaged pixel data is found (a JPEG's is not, docs/robustness.md).
    "damaged.png": ("corrupt or truncated", lambda good: DAMAGED_PNG),
}
_png = saved(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG").getvalue()
DAMAGED_PNG = _png[:60] + bytes(20) + _png[80:]


@pytest.fixture
def bad_folder(tmp_path) -> tuple[Path, list[str]]:
    """A folder of 6 good JPEGs, the bad files above, a folder named like an image, a missing file."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = saved(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG").getvalue()
    names = []
    for i in range(6):
        (folder / f"good{i}.jpg").write_bytes(good)
        names.append(f"good{i}.jpg")
    for name, (_, corrupt) in BAD_FILES.items():
        (folder / name).write_bytes(corrupt(good))
        names.append(name)
    (folder / "folder.jpg").mkdir()
    return folder, names + ["folder.jpg", "missing.jpg"]


def test_every_bad_image_is_listed_with_its_reason(tmp_path, bad_folder) -> None:
    folder, names = bad_folder
    table = load_table(write_plain_csv(tmp_path / "all.csv", [(n, ["x"]) for n in names], "images/"))
    report = tmp_path / "bad.txt"
    with pytest.raises(DataError) as info:
        validate_images(table, "decode", "error", progress=False, report=report)
    message = str(info.value)
    assert "7 of 13 images cannot be used" in message and "all.csv" in message
    reasons = dict(BAD_FILES) | {"folder.jpg": ("a folder",), "missing.jpg": ("not found",)}
    for name, (reason, *_) in reasons.items():
        line = next(line for line in message.splitlines() if f"{folder / name}:" in line)
        assert reason in line, line
    assert len(report.read_text().splitlines()) == 7
    # skip: the usable rest, and the problems.
    usable, problems = validate_images(table, "decode", "skip", progress=False)
    assert len(problems) == 7 and usable.paths == [f"images/good{i}.jpg" for i in range(6)]
    # exists only finds the missing file and the folder.
    assert len(validate_images(table, "exists", "skip", progress=False)[1]) == 2
    # An empty split has nothing wrong with it.
    empty = table.subset([])
    assert validate_images(empty, "decode", "error", progress=False) == (empty, [])


def test_skip_trains_on_the_rest_and_survives_an_image_going_bad(colour_dataset, tmp_path) -> None:
    folder = tmp_path / "images"
    rows = make_colour_images(folder, 32)
    (folder / "img004.png").write_bytes(b"not a png")
    (folder / "img009.png").unlink()
    train = write_plain_csv(tmp_path / "train.csv", rows, "images/")
    config = tiny_config(colour_dataset, tmp_path / "runs", epochs=2)
    config["data"].update(train=str(train), on_bad_image="skip", num_workers=1)

    def delete_one(epoch: int, row: dict) -> None:
        if epoch == 1:  # after the up-front check: found by the loader (in a worker process)
            (folder / "img017.png").unlink()

    run = mlic.train(config, progress=False, quiet=True, on_epoch_end=delete_one)
    rows_out = read_metrics(run)
    assert [r["skipped_images"] for r in rows_out] == ["2", "3"]
    log = (run / "train.log").read_text()
    assert "skipped 2 of 32 images" in log and "img004.png" in (run / "bad_images.txt").read_text()
    assert "epoch 2: 1 images could not be read" in log
    assert "img017.png: image file not found" in (run / "unreadable_images.txt").read_text()
    assert (run / "eval_test.json").is_file()


def test_skip_gives_up_when_the_data_is_gone(tmp_path) -> None:
    rows = make_colour_images(tmp_path / "images", 20)
    table = load_table(write_plain_csv(tmp_path / "t.csv", rows, "images/"))
    shutil.rmtree(tmp_path / "images")
    dataset = MultiLabelDataset(table, lambda image: image, "skip", tmp_path / "failures.txt")
    with pytest.raises(DataError, match="16 images in a row cannot be read.*still there"):
        dataset[3]
    with pytest.raises(DataError, match="none of the 20 images can be used"):
        validate_images(table, "exists", "skip", progress=False)


# ---------------------------------------------------------------------------- annotations

def test_paths_outside_the_root_are_refused_unless_allowed(tmp_path, capsys) -> None:
    rows = make_colour_images(tmp_path / "data", 16)
    make_colour_images(tmp_path / "elsewhere", 1)
    rows[3] = ("../elsewhere/img000.png", ["red"])
    train = write_plain_csv(tmp_path / "data" / "train.csv", rows)  # paths relative to data/
    cli_error(capsys, train_args(tmp_path, f"data.train={train}"), train, "line 5",
              "'../elsewhere/img000.png' is outside the image root", "allow_outside_root")
    assert main(train_args(tmp_path, f"data.train={train}", "data.train.allow_outside_root=true")) == 0


def test_images_without_labels_are_kept_and_noted(colour_dataset, tmp_path) -> None:
    rows = make_colour_images(tmp_path / "images", 16)
    rows[0] = (rows[0][0], [])
    rows[1] = (rows[1][0], [])
    train = write_plain_csv(tmp_path / "train.csv", rows, "images/")
    config = tiny_config(colour_dataset, tmp_path / "runs", epochs=1)
    config["data"]["train"] = str(train)
    run = mlic.train(config, progress=False, quiet=True)
    assert "2 of 16 training images have no positive label" in (run / "train.log").read_text()


def test_duplicate_entries_are_named(tmp_path) -> None:
    rows = [("a.png", ["x"]), ("b.png", ["y"]), ("a.png", ["y"])]
    csv_path = write_plain_csv(tmp_path / "dup.csv", rows)
    with pytest.raises(DataError, match=r"dup.csv: line 4: image 'a.png' is listed twice \(first on line 2\)"):
        load_table(csv_path)
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
            "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"c.json: images\[1\]: image id 1 appears twice"):
        load_table(tmp_path / "c.json")


# --------------------------------------------------------------------------------- config

@pytest.mark.parametrize("override, parts", [
    ("loss.params.gama_neg=2", ["unknown key 'loss.params.gama_neg'", "did you mean "
                                "'loss.params.gamma_neg'"]),
    ("loss.params.scale=0", ["'loss.params'", "scale must be > 0, got 0"]),
    ("loss.params.scale=abc", ["'loss.params.scale' must be a number, got 'abc'"]),
    ("loss.params.k=1.5", ["'loss.params'", "k must be"]),
    ("loss.name=aasl", ["'loss.name'", "did you mean 'asl'"]),
    ("model.head_params.dropuot=0.1", ["unknown key 'model.head_params.dropuot'",
                                       "did you mean 'model.head_params.dropout'"]),
    ("model.head_params.scale=-2", ["'model.head_params.scale' must be > 0"]),
    ("model.head_params.cosine=yes please", ["'model.head_params.cosine' must be true or false"]),
    ("model.head=ml_decodr", ["'model.head'", "did you mean 'ml_decoder'"]),
    ("train.max_skipped_steps=-1", ["'train.max_skipped_steps' must be >= 0"]),
    ("data.on_bad_image=ignore", ["'data.on_bad_image' must be one of error, skip"]),
    ("eval.threshold=-0.1", ["'eval.threshold' must be in [0, 1]"]),
    ("train.weight_decay=-1e-4", ["'train.weight_decay' must be >= 0"]),
])
def test_bad_values_are_refused_before_anything_starts(tmp_path, capsys, override, parts) -> None:
    loss = "loss.name=aam" if override.startswith(("loss.params.scale", "loss.params.k")) else \
        "loss.name=asl"
    cli_error(capsys, train_args(tmp_path, "data.train=missing.csv", loss, override), *parts)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------- numerics

def test_guard_tolerates_fp16_skips_then_stops(tmp_path) -> None:
    guard = NonFiniteGuard(tolerated=2, scaler_enabled=True, checkpoints=tmp_path)
    guard(float("inf"), False, 1, 1)
    guard(0.5, False, 1, 2)  # an overflowing gradient with a finite loss also counts
    guard(0.4, True, 1, 3)   # a good step resets the count
    guard(float("nan"), False, 1, 4)
    guard(float("nan"), False, 1, 5)
    with pytest.raises(NonFiniteLoss, match="3 steps in a row .*step 6.*max_skipped_steps is 2"):
        guard(float("nan"), False, 1, 6)
    strict = NonFiniteGuard(tolerated=5, scaler_enabled=False, checkpoints=tmp_path)
    with pytest.raises(NonFiniteLoss, match=f"the loss became nan at epoch 2, step 9.*{tmp_path}"):
        strict(float("nan"), True, 2, 9)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(colour_dataset, tmp_path,
                                                                   monkeypatch, capsys) -> None:
    from mlic.engine.step import OptimizerStep
    original, calls = OptimizerStep.__call__, []

    def nan_in_epoch_two(self, images, targets, label_states=None):
        loss, stepped = original(self, images, targets, label_states)
        calls.append(1)
        return (float("nan"), stepped) if len(calls) == 5 else (loss, stepped)

    monkeypatch.setattr(OptimizerStep, "__call__", nan_in_epoch_two)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_config(colour_dataset, tmp_path / "runs", epochs=3)))
    # 48 images, batch 16: 3 steps per epoch; the 5th step is epoch 2's second.
    err = cli_error(capsys, ["train", "--config", config, "--no-progress"],
                    "the loss became nan at epoch 2, step 5", "last good checkpoint")
    run = only_run(tmp_path / "runs")
    assert str(run / "checkpoints") in err
    assert ckpt.load_training_state(run / "checkpoints")["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run)] == ["1"]
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epoch"] == 1


# ------------------------------------------------------------------------ crash safety

def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")

    def failing(temp: str) -> None:
        Path(temp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_atomic_write_gives_the_mode_open_would(tmp_path) -> None:
    """Not mkstemp's private 0600: a run's report and metrics are meant to be shared."""
    atomic_write(tmp_path / "f.txt", lambda temp: Path(temp).write_text("x"))
    (tmp_path / "g.txt").write_text("x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == (tmp_path / "g.txt").stat().st_mode & 0o777


def test_sigint_during_a_save_is_held_until_the_save_is_done(tmp_path) -> None:
    # Python's own Ctrl-C handler, as in a terminal (a shell's background job starts with SIGINT
    # ignored): the block must give back whatever handler it found.
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with ckpt.deferred_interrupt():
                # To the main thread, as a terminal's Ctrl-C is handled: a process-directed
                # signal may land on a native library's thread (after OpenVINO was imported, in
                # this suite, that crashes the interpreter).
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                time.sleep(0.05)
                done.append(True)  # still running after the signal
        assert done == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job has it
        with ckpt.deferred_interrupt():
            pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # given back, not replaced
    finally:
        signal.signal(signal.SIGINT, found)


def test_torn_weights_and_metadata_pair_loads_with_its_own_metadata(tiny_run_copy) -> None:
    run = tiny_run_copy
    folder = run / "checkpoints"
    model, meta = ckpt.load_model(folder, "best")
    # A crash between the two renames of a save: the new weights beside the previous JSON.
    old_json = (folder / "best.json").read_text()
    weights = {k: v + 1 for k, v in model.state_dict().items()}
    ckpt.save_model(folder, "best", weights, {**meta, "epoch": 99})
    (folder / "best.json").write_text(old_json)
    loaded, loaded_meta = ckpt.load_model(folder, "best")
    assert loaded_meta["epoch"] == 99 and loaded_meta["save_id"] != json.loads(old_json)["save_id"]
    assert torch.equal(loaded.state_dict()["head.fc.bias"], weights["head.fc.bias"])
    # When the pair matches, the JSON is what counts (tune-thresholds edits it).
    ckpt.save_model(folder, "best", weights, meta)
    edited = {**json.loads((folder / "best.json").read_text()), "thresholds": 0.3}
    (folder / "best.json").write_text(json.dumps(edited))
    assert ckpt.load_model(folder, "best")[1]["thresholds"] == 0.3


def test_pickled_object_in_a_training_state_is_refused(tiny_run_copy, capsys) -> None:
    run = tiny_run_copy
    state_file = run / "checkpoints" / "last.state.pt"
    state = torch.load(state_file, weights_only=True)
    state["payload"] = Path("/etc/passwd")  # any object beyond tensors and numbers
    torch.save(state, state_file)
    cli_error(capsys, ["train", "--resume", run, "--no-progress"], state_file, "refused",
              "pickled Python objects")
    state_file.write_bytes(state_file.read_bytes()[:1000])
    cli_error(capsys, ["train", "--resume", run, "--no-progress"], state_file,
              "cannot read the training state")


def test_resume_ignores_killed_writes_and_refuses_ignored_changes(tiny_run_copy, capsys) -> None:
    run = tiny_run_copy
    stale = run / "checkpoints" / f"{TEMP_PREFIX}last.state.pt.abc123"
    stale.write_bytes(b"half a file")
    cli_error(capsys, ["train", "--resume", run, "train.lr=0.5", "--no-progress"],
              "'train.lr' cannot change when resuming")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert not stale.exists()


def _subprocess_env() -> dict[str, str]:
    # One thread, as the tests in this process run (conftest): the same arithmetic, bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(Path(mlic.__file__).parent.parent)}


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(colour_dataset, tmp_path) -> None:
    config = tiny_config(colour_dataset, tmp_path / "killed", epochs=3, ema=0.9)
    straight = mlic.train({**config, "output_dir": str(tmp_path / "straight")}, progress=False,
                          quiet=True)
    config_file = tmp_path / "killed.json"
    config_file.write_text(json.dumps(config))
    command = [sys.executable, "-m", "mlic", "train", "--config", str(config_file), "--no-progress"]
    process = subprocess.Popen(command, env=_subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        runs = list((tmp_path / "killed").glob("*/metrics.csv"))
        if runs and len(read_metrics(runs[0].parent)) >= 1:
            break  # epoch 1 is saved: kill during epoch 2
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = only_run(tmp_path / "killed")
    assert not (run / "eval_test.json").exists()
    result = subprocess.run(command[:4] + ["--resume", str(run), "--no-progress"],
                            env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert rows_without_time(run) == rows_without_time(straight)
    for name in ("best.safetensors", "last.safetensors"):
        assert_same_tensors(run / "checkpoints" / name, straight / "checkpoints" / name, atol=0)
    reports = [json.loads((r / "eval_test.json").read_text()) for r in (run, straight)]
    assert reports[0]["mAP"] == reports[1]["mAP"]
