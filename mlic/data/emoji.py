"""The emoji benchmark: a real multi-label dataset built from npm packages.

Each image is one vendor's 64x64 drawing of an emoji (``emoji-datasource-<vendor>``); its labels are
the Unicode CLDR English keywords of that emoji (``emojibase-data``), kept when at least
``min_emoji_per_label`` distinct emoji carry them. See the README, "The demo".

``build_emoji_benchmark(out_dir)`` writes::

    out_dir/images/<vendor>/<HEXCODE>.png   RGB, drawn on white; HEXCODE upper-case, without FE0F
    out_dir/style_train.csv, style_test.csv  held-out drawing style: test = one vendor
    out_dir/style_fit.csv, style_val.csv     style_train less a random 15%, and that 15%: a
                                             validation split for selection and early stopping
    out_dir/emoji_train.csv, emoji_test.csv  held-out emoji, grouped by first code point
    out_dir/labels.txt                       label names, one a line (``classes=`` of the CSV loader)
    out_dir/info.json                        versions, parameters, counts; written last

Licences: the google (Apache-2.0) and twitter (CC-BY-4.0) images may be redistributed with
attribution; the apple and facebook images may only be used locally at run time. A folder built with
those vendors (and its ``.packages`` tarball cache) must not be committed or redistributed.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from mlic.data.formats.csv_table import save_csv
from mlic.data.table import POSITIVE, LabelTable
from mlic.errors import DataError, MlicError

EMOJIBASE = ("emojibase-data", "17.0.0")
DATASOURCE_VERSION = "16.0.0"
VENDORS = ("google", "apple", "facebook", "twitter")
TEST_FRACTION = 0.2  # of emoji groups, for the held-out-emoji protocol
SPLITS = ("style_train", "style_test", "emoji_train", "emoji_test")
VALIDATION_FRACTION = 0.15  # of style_train, held out as style_val.csv
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)


def _packages(vendors: Sequence[str]) -> dict[str, str]:
    return dict([EMOJIBASE] + [(f"emoji-datasource-{v}", DATASOURCE_VERSION) for v in vendors])


def fetch_packages(packages: dict[str, str], packages_dir: str | Path | None,
                   cache_dir: str | Path) -> dict[str, Path]:
    """Paths of the ``npm pack`` tarballs of ``packages`` ({name: version}).

    Taken from ``packages_dir`` when given, else packed with npm into ``cache_dir`` (reused there).
    """
    folder = Path(packages_dir if packages_dir is not None else cache_dir).expanduser()
    paths = {name: folder / f"{name}-{version}.tgz" for name, version in packages.items()}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing and packages_dir is not None:
        raise MlicError(f"{folder}: no tarball of {', '.join(missing)}; fetch them with "
                        f"`npm pack {' '.join(f'{n}@{packages[n]}' for n in missing)}`")
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            raise MlicError("the emoji benchmark needs `npm` (Node.js) to fetch its packages from "
                            "the npm registry: install Node.js, or pass packages_dir= a folder "
                            "holding tarballs made with `npm pack NAME@VERSION`")
        folder.mkdir(parents=True, exist_ok=True)
        for name in missing:
            with tempfile.TemporaryDirectory(dir=folder) as tmp:  # no half-written tarball in cache
                try:
                    subprocess.run([npm, "pack", f"{name}@{packages[name]}"], cwd=tmp, check=True,
                                   capture_output=True, text=True)
                except (OSError, subprocess.CalledProcessError) as e:
                    detail = (getattr(e, "stderr", None) or str(e)).strip()[-500:]
                    raise MlicError(f"`npm pack {name}@{packages[name]}` failed ({detail}); "
                                    "check the network access to the npm registry, or pass "
                                    "packages_dir= a folder of pre-fetched tarballs") from None
                os.replace(Path(tmp) / paths[name].name, paths[name])
    return paths


def _read_tarball(path: Path, wanted: str, image_prefix: str | None = None):
    """One pass over a tarball: the JSON member ``wanted`` and {file name: bytes} under the prefix."""
    data, images = None, {}
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                if member.name == wanted:
                    data = json.load(tar.extractfile(member))
                elif image_prefix and member.isfile() and member.name.startswith(image_prefix):
                    images[member.name[len(image_prefix):]] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError, ValueError) as e:
        raise DataError(f"not a readable npm tarball ({e})", path) from None
    if data is None:
        raise DataError(f"has no {wanted}", path)
    return data, images


def _code(hexcode: str) -> str:
    """Join key: upper-case code points without the FE0F variation selector."""
    return "-".join(p for p in hexcode.upper().split("-") if p != "FE0F")


def _group(code: str) -> str:
    """Emoji that must stay on one side of the held-out-emoji split: same first code point (a flag:
    same regional-indicator pair)."""
    points = code.split("-")
    return "-".join(points[:2]) if int(points[0], 16) in _REGIONAL_INDICATORS else points[0]


def _composite(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")


def _table(rows: list[tuple[str, list[str]]], labels: list[str]) -> LabelTable:
    column = {name: j for j, name in enumerate(labels)}
    targets = np.zeros((len(rows), len(labels)), dtype=np.int8)
    for i, (_, tags) in enumerate(rows):
        targets[i, [column[t] for t in tags]] = POSITIVE
    return LabelTable([image for image, _ in rows], labels, targets)


def _cached(out: Path, params: dict) -> dict | None:
    try:
        info = json.loads((out / "info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = [out / "labels.txt"] + [out / f"{s}.csv" for s in SPLITS]
    return info if info.get("params") == params and all(f.is_file() for f in files) else None


def build_emoji_benchmark(out_dir: str | Path, min_emoji_per_label: int = 10,
                          vendors: Sequence[str] = VENDORS, test_vendor: str = "twitter",
                          packages_dir: str | Path | None = None, seed: int = 0,
                          progress: bool = True) -> dict:
    """Build (or reuse) the emoji benchmark in ``out_dir`` and return its info dict."""
    out = Path(out_dir).expanduser()
    vendors = list(dict.fromkeys(vendors))
    unknown = sorted(set(vendors) - set(VENDORS))
    if unknown or not vendors:
        raise MlicError(f"emoji vendors must be among {', '.join(VENDORS)} (got {vendors})")
    if test_vendor not in vendors or len(vendors) < 2:
        raise MlicError(f"test_vendor {test_vendor!r} must be one of at least two vendors {vendors}")
    if min_emoji_per_label < 1:
        raise MlicError(f"min_emoji_per_label must be at least 1 (got {min_emoji_per_label})")
    packages = _packages(vendors)
    params = {"min_emoji_per_label": min_emoji_per_label, "vendors": vendors,
              "test_vendor": test_vendor, "seed": seed, "packages": packages}
    info = _cached(out, params)
    if info is not None:
        if not (out / "style_val.csv").is_file():  # built before the validation split existed
            validation_split(out, seed=seed)
        print(f"emoji benchmark: cached in {out}")
        return info

    out.mkdir(parents=True, exist_ok=True)
    (out / "info.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    tarballs = fetch_packages(packages, packages_dir, out / ".packages")
    emojibase, _ = _read_tarball(tarballs[EMOJIBASE[0]], "package/en/data.json")
    sources, pngs = {}, {}
    for v in vendors:
        table, pngs[v] = _read_tarball(tarballs[f"emoji-datasource-{v}"], "package/emoji.json",
                                       f"package/img/{v}/64/")
        sources[v] = {_code(e["unified"]): e for e in table}

    # Base emoji only (emojibase nests skin tones under "skins"), with an image of some vendor.
    emoji = {}  # code -> (tags, {vendor: png bytes}), in emojibase order
    for entry in emojibase:
        code = _code(entry["hexcode"])
        found = {v: pngs[v][src["image"]] for v in vendors
                 if (src := sources[v].get(code)) and src.get(f"has_img_{v}")
                 and src["image"] in pngs[v]}
        if found and code not in emoji:
            emoji[code] = (set(entry.get("tags") or ()), found)
    counts = Counter(tag for tags, _ in emoji.values() for tag in tags)
    labels = sorted(tag for tag, n in counts.items() if n >= min_emoji_per_label)
    kept = {code: (sorted(tags.intersection(labels)), found) for code, (tags, found) in emoji.items()}
    kept = {code: value for code, value in kept.items() if value[0]}
    if not kept:
        raise DataError(f"no label is carried by {min_emoji_per_label} emoji; lower "
                        "min_emoji_per_label", tarballs[EMOJIBASE[0]])

    groups = sorted({_group(code) for code in kept})
    random.Random(seed).shuffle(groups)
    test_groups = set(groups[:max(1, round(TEST_FRACTION * len(groups)))])
    rows = {split: [] for split in SPLITS}
    bar = tqdm(total=sum(len(f) for _, f in kept.values()), desc="emoji images",
               disable=not progress)
    for v in vendors:
        (out / "images" / v).mkdir(parents=True, exist_ok=True)
        for code, (tags, found) in kept.items():
            if v not in found:
                continue
            image = f"images/{v}/{code}.png"
            _composite(found[v]).save(out / image)
            rows["style_test" if v == test_vendor else "style_train"].append((image, tags))
            rows["emoji_test" if _group(code) in test_groups else "emoji_train"].append((image, tags))
            bar.update()
    bar.close()
    for split, split_rows in rows.items():
        save_csv(_table(split_rows, labels), out / f"{split}.csv", classes_path=out / "labels.txt")
    validation_split(out, seed=seed)

    n_images = len(rows["style_train"]) + len(rows["style_test"])  # each image once
    info = {
        "params": params,
        "num_labels": len(labels),
        "num_emoji": len(kept),
        "num_images": n_images,
        "images_per_vendor": {v: sum(v in f for _, f in kept.values()) for v in vendors},
        "splits": {split: len(split_rows) for split, split_rows in rows.items()},
        "emoji_test_groups": len(test_groups),
        "labels_per_image": round(sum(len(t) for _, t in rows["style_train"] + rows["style_test"])
                                  / n_images, 3),
        "label_frequencies": {name: counts[name] for name in labels},  # emoji, not images
        "licences": "apple and facebook images: local run-time use only, do not redistribute",
    }
    tmp = out / "info.json.tmp"
    tmp.write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out / "info.json")
    return info


def validation_split(out_dir: str | Path, fraction: float = VALIDATION_FRACTION, seed: int = 0
                     ) -> tuple[Path, Path]:
    """style_train.csv split into style_fit.csv (trained on) and style_val.csv (a random
    ``fraction``): other vendors' drawings of emoji that the fit split also has, as the Twitter
    test drawings are, so model selection and early stopping see the test's kind of shift."""
    out = Path(out_dir)
    fit, val = out / "style_fit.csv", out / "style_val.csv"
    header, *rows = (out / "style_train.csv").read_text(encoding="utf-8").splitlines()
    held = set(np.random.default_rng(seed).choice(len(rows), int(fraction * len(rows)),
                                                 replace=False).tolist())
    for path, keep in ((fit, False), (val, True)):
        kept = [r for k, r in enumerate(rows) if (k in held) == keep]
        path.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    return fit, val
