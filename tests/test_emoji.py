"""The emoji benchmark builder, on tiny fake npm tarballs in the real packages' layout."""
from __future__ import annotations

import io
import json
import os
import stat
import tarfile

import pytest
from PIL import Image

from mlic.data import emoji as em
from mlic.data.formats.csv_table import load_csv
from mlic.errors import MlicError

VENDORS = ("google", "apple", "twitter")
# emojibase entries: (hexcode, tags). 1FAE8 has no image anywhere; 1F9FF has an entry but no image.
EMOJIBASE = [
    ("1F600", ["face", "smile", "happy"]),
    ("1F603", ["face", "smile", "open"]),  # "open": one emoji, several images -> not a label at K=2
    ("2764", ["heart", "love", "red"]),  # datasource says 2764-FE0F
    ("1F496-FE0F", ["heart", "love", "sparkle"]),  # datasource says 1F496
    ("1F44B", ["hand", "wave"]),  # has skins below
    ("1F91A", ["hand", "raised"]),
    ("1F468", ["man", "adult"]),
    ("1F469", ["woman", "adult"]),
    ("1F468-200D-1F373", ["man", "cook"]),
    ("1F469-200D-1F373", ["woman", "cook"]),
    ("1F1EB-1F1F7", ["flag", "FR"]),
    ("1F1E9-1F1EA", ["flag", "DE"]),  # no apple image
    ("1F1EB-1F1EE", ["flag", "FI"]),
    ("1F4FF", ["amulet", "beads"]),  # no kept label -> dropped
    ("1F9FF", ["amulet"]),  # no image of any vendor -> does not count
    ("1FAE8", ["face", "wave"]),  # not in emoji-datasource -> does not count
]
SKINS = {"1F44B": [("1F44B-1F3FB", ["hand", "wave", "skin"]), ("1F44B-1F3FC", ["hand", "skin"])]}
DATASOURCE = {"2764": "2764-FE0F", "1F496-FE0F": "1F496"}
LABELS = ["adult", "cook", "face", "flag", "hand", "heart", "love", "man", "smile", "woman"]
KEPT = [h.replace("-FE0F", "") for h, tags in EMOJIBASE if set(tags) & set(LABELS)
        and h != "1FAE8"]


def _has_image(unified: str, vendor: str) -> bool:
    return not unified.startswith("1F9FF") and not (vendor == "apple" and unified == "1F1E9-1F1EA")


def _png(color: tuple[int, int, int]) -> bytes:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent, black underneath
    image.paste(Image.new("RGBA", (32, 32), color + (255,)), (16, 16))
    image.putpixel((1, 1), (0, 0, 0, 128))  # half transparent black
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _tarball(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _color(vendor: str, index: int) -> tuple[int, int, int]:
    return (10 * index, 60 * VENDORS.index(vendor), 7)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npm")
    entries = []
    for hexcode, tags in EMOJIBASE:
        entry = {"hexcode": hexcode, "label": hexcode, "tags": tags}
        if hexcode in SKINS:
            entry["skins"] = [{"hexcode": h, "tags": t, "tone": 1} for h, t in SKINS[hexcode]]
        entries.append(entry)
    _tarball(folder / "emojibase-data-17.0.0.tgz",
             {"package/package.json": b"{}", "package/en/data.json": json.dumps(entries).encode()})
    for vendor in VENDORS:
        table, files = [], {}
        for i, (hexcode, _) in enumerate(EMOJIBASE):
            if hexcode == "1FAE8":
                continue
            unified = DATASOURCE.get(hexcode, hexcode)

            def record(code, i=i):
                has = _has_image(code, vendor)
                if has:
                    files[f"package/img/{vendor}/64/{code.lower()}.png"] = _png(_color(vendor, i))
                return {"unified": code, "image": f"{code.lower()}.png",
                        **{f"has_img_{v}": _has_image(code, v) for v in VENDORS}}
            row = record(unified)
            if hexcode in SKINS:
                row["skin_variations"] = {h.split("-")[1]: record(h) for h, _ in SKINS[hexcode]}
            table.append(row)
        files = {"package/emoji.json": json.dumps(table).encode(), **files,
                 f"package/img/{vendor}/32/1f600.png": _png((1, 2, 3))}
        _tarball(folder / f"emoji-datasource-{vendor}-16.0.0.tgz", files)
    return folder


@pytest.fixture(scope="module")
def built(packages, tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji")
    info = em.build_emoji_benchmark(out, min_emoji_per_label=2, vendors=VENDORS,
                                    packages_dir=packages, progress=False)
    return out, info


def _read(path, labels_path) -> dict[str, set[str]]:
    """{image path relative to the CSV folder: its labels}, read with the CSV loader."""
    table = load_csv(path, classes=labels_path)
    assert table.label_names == labels_path.read_text(encoding="utf-8").split()
    return {p: set(table.labels_of(i)) for i, p in enumerate(table.paths)}


def _code(image: str) -> str:
    return image.rsplit("/", 1)[1][:-4]


def test_labels_counted_per_emoji_without_skins(built):
    out, info = built
    assert (out / "labels.txt").read_text(encoding="utf-8").split() == LABELS
    assert info["num_labels"] == len(LABELS) and info["num_emoji"] == len(KEPT) == 13
    assert info["label_frequencies"]["flag"] == 3 and info["label_frequencies"]["face"] == 2
    assert info["images_per_vendor"] == {"google": 13, "apple": 12, "twitter": 13}
    images = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    assert images == {f"images/{v}/{c}.png" for v in VENDORS for c in KEPT} - {
        "images/apple/1F1E9-1F1EA.png"}
    assert not any("1F3FB" in p or "1F4FF" in p for p in images)


def test_threshold_k(packages, tmp_path):
    info = em.build_emoji_benchmark(tmp_path, min_emoji_per_label=3, vendors=VENDORS,
                                    packages_dir=packages, progress=False)
    assert info["label_frequencies"] == {"flag": 3} and info["num_images"] == 8
    with pytest.raises(MlicError, match="min_emoji_per_label"):
        em.build_emoji_benchmark(tmp_path / "x", min_emoji_per_label=4, vendors=VENDORS,
                                 packages_dir=packages, progress=False)


def test_fe0f_join_and_white_background(built):
    out, _ = built
    table = _read(out / "style_test.csv", out / "labels.txt")
    assert table["images/twitter/2764.png"] == {"heart", "love"}
    assert table["images/twitter/1F496.png"] == {"heart", "love"}
    image = Image.open(out / "images" / "apple" / "1F600.png")
    assert image.mode == "RGB" and image.size == (64, 64)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((32, 32)) == _color("apple", 0)
    assert all(abs(c - 127) <= 1 for c in image.getpixel((1, 1)))


def test_protocols(built):
    out, info = built
    split = {name: _read(out / f"{name}.csv", out / "labels.txt") for name in em.SPLITS}
    assert info["splits"] == {name: len(rows) for name, rows in split.items()}
    assert all(p.startswith("images/twitter/") for p in split["style_test"])
    assert not any(p.startswith("images/twitter/") for p in split["style_train"])
    assert len(split["style_test"]) == 13 and len(split["style_train"]) == 25
    everything = split["style_train"] | split["style_test"]
    assert split["emoji_train"] | split["emoji_test"] == everything
    assert not set(split["emoji_train"]) & set(split["emoji_test"])
    test_codes = {_code(p) for p in split["emoji_test"]}
    train_codes = {_code(p) for p in split["emoji_train"]}
    assert test_codes and not test_codes & train_codes  # every vendor of an emoji on one side
    assert not {em._group(c) for c in test_codes} & {em._group(c) for c in train_codes}
    assert info["emoji_test_groups"] == 2  # 20% of 11 groups
    assert em._group("1F468-200D-1F373") == em._group("1F468") == "1F468"
    assert em._group("1F1EB-1F1F7") == "1F1EB-1F1F7" != em._group("1F1EB-1F1EE")


def test_cached_build_is_not_rewritten(built, packages, capsys):
    out, info = built
    files = [out / "style_train.csv", out / "images" / "google" / "1F600.png", out / "info.json"]
    before = [f.stat().st_mtime_ns for f in files]
    again = em.build_emoji_benchmark(out, min_emoji_per_label=2, vendors=VENDORS,
                                     packages_dir=packages, progress=False)
    assert again == info and "cached" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in files] == before


def test_rebuild_on_new_parameters_and_interrupted_build(packages, tmp_path, monkeypatch, capsys):
    kwargs = dict(min_emoji_per_label=2, vendors=VENDORS, packages_dir=packages, progress=False)
    first = em.build_emoji_benchmark(tmp_path, **kwargs)
    second = em.build_emoji_benchmark(tmp_path, **{**kwargs, "seed": 1})
    assert second["params"]["seed"] == 1 and "cached" not in capsys.readouterr().out
    assert second["splits"]["style_test"] == first["splits"]["style_test"]

    def interrupted(png):
        raise KeyboardInterrupt
    monkeypatch.setattr(em, "_composite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        em.build_emoji_benchmark(tmp_path, **kwargs)
    assert not (tmp_path / "info.json").exists()  # the old, complete info.json is gone
    monkeypatch.undo()
    assert em.build_emoji_benchmark(tmp_path, **kwargs) == first


def _fake_npm(folder, script: str) -> None:
    folder.mkdir()
    npm = folder / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)


def test_fetch_with_npm(packages, tmp_path, monkeypatch):
    # a stand-in npm: `npm pack NAME@VERSION` copies NAME-VERSION.tgz from the fake packages
    _fake_npm(tmp_path / "bin", f'cp "{packages}/$(echo "$2" | tr @ -).tgz" .\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    info = em.build_emoji_benchmark(tmp_path / "out", min_emoji_per_label=2, vendors=VENDORS,
                                    progress=False)
    assert info["num_images"] == 38
    assert sorted(p.name for p in (tmp_path / "out" / ".packages").iterdir()) == sorted(
        f"{name}-{version}.tgz" for name, version in em._packages(VENDORS).items())


def test_npm_missing_or_failing(tmp_path, monkeypatch):
    monkeypatch.setattr(em.shutil, "which", lambda name: None)
    with pytest.raises(MlicError, match="npm.*packages_dir"):
        em.build_emoji_benchmark(tmp_path / "a", progress=False)
    monkeypatch.undo()
    _fake_npm(tmp_path / "bin", "echo 'npm ERR! network' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(MlicError, match="network"):
        em.build_emoji_benchmark(tmp_path / "b", progress=False)
    with pytest.raises(MlicError, match="npm pack emojibase-data@17.0.0"):
        em.build_emoji_benchmark(tmp_path / "c", packages_dir=tmp_path, progress=False)
    assert not (tmp_path / "b" / "info.json").exists()
