"""The record of images that passed the decode check: a resume decodes nothing again, a changed
file is decoded again, a failed one is never taken as good."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

import mlic.data.validate as validate
from mlic.data.formats.csv_table import load_csv
from mlic.data.image_check_cache import cache_file
from mlic.errors import DataError


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The names of the images the check decodes, in order."""
    seen: list[str] = []
    real = validate.load_rgb

    def counting(path, *args, **kwargs):
        seen.append(Path(path).name)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(validate, "load_rgb", counting)
    return seen


def images_csv(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")
    path = folder / "labels.csv"
    path.write_text("image,labels\n" + "".join(f"{i}.png,a\n" for i in range(count)))
    return path


def test_a_second_check_decodes_only_what_changed(tmp_path, decodes) -> None:
    table = load_csv(images_csv(tmp_path / "data"))
    cache = tmp_path / "cache"
    assert validate.validate_images(table, "decode", progress=False, cache_dir=cache)[1] == []
    assert sorted(decodes) == ["0.png", "1.png", "2.png", "3.png"]
    assert cache_file(table, validate.MAX_PIXELS, cache).is_file()

    decodes.clear()  # a resume, or a later run on the same annotation file
    validate.validate_images(load_csv(table.source), "decode", progress=False, cache_dir=cache)
    assert decodes == []

    image = tmp_path / "data" / "1.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: same bytes
    Image.new("RGB", (9, 9)).save(tmp_path / "data" / "2.png")  # written over: another size
    validate.validate_images(table, "decode", progress=False, cache_dir=cache)
    assert sorted(decodes) == ["1.png", "2.png"]

    decodes.clear()  # a different pixel limit is another record: everything is decoded again
    validate.validate_images(table, "decode", progress=False, cache_dir=cache, max_pixels=10**6)
    assert len(decodes) == 4


def test_a_bad_image_is_never_recorded_as_good(tmp_path, decodes) -> None:
    table = load_csv(images_csv(tmp_path / "data"))
    (tmp_path / "data" / "3.png").write_bytes(b"not an image")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="3.png"):
        validate.validate_images(table, "decode", progress=False, cache_dir=cache)
    decodes.clear()
    usable, problems = validate.validate_images(table, "decode", "skip", progress=False,
                                                cache_dir=cache)
    assert decodes == ["3.png"] and len(problems) == 1 and len(usable) == 3
    decodes.clear()
    (tmp_path / "data" / "0.png").unlink()  # gone since the check: stat fails, checked again
    problems = validate.validate_images(table, "decode", "skip", progress=False,
                                        cache_dir=cache)[1]
    assert sorted(decodes) == ["0.png", "3.png"] and len(problems) == 2


def test_an_edited_annotation_file_keeps_the_record_of_its_unchanged_images(tmp_path,
                                                                            decodes) -> None:
    path = images_csv(tmp_path / "data", count=5)
    cache = tmp_path / "cache"
    validate.validate_images(load_csv(path), "decode", progress=False, cache_dir=cache)
    decodes.clear()
    path.write_text("image,labels\n4.png,a\n0.png,a\n2.png,b\n")  # reordered, some left out
    validate.validate_images(load_csv(path), "decode", progress=False, cache_dir=cache)
    assert decodes == []


def test_without_a_cache_every_image_is_decoded_each_time(tmp_path, decodes) -> None:
    table = load_csv(images_csv(tmp_path / "data"))
    for _ in range(2):
        validate.validate_images(table, "decode", progress=False)
    assert len(decodes) == 8
