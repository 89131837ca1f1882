"""OpenImages V6 image-level labels.

Two CSV files::

    oidv6-train-annotations-human-imagelabels.csv    (the labels, one row per image and label)
        ImageID,Source,LabelName,Confidence
        000002b66c9c498e,verification,/m/014sv8,1
        000002b66c9c498e,verification,/m/0284d,0

    oidv6-class-descriptions.csv                     (names of the label MIDs)
        LabelName,DisplayName
        /m/014sv8,Human eye

The older ``class-descriptions-boxable.csv`` has the same two columns without a header.

Confidence 1 is positive and 0 negative (a human verified the label absent). OpenImages labels
are sparse: a label nobody verified on an image is unknown (-1), not negative. A label verified
both ways by different sources counts as positive. Images are ``<root>/<ImageID><image_ext>``.
"""
from __future__ import annotations

import csv
from array import array
from collections import Counter
from pathlib import Path
from typing import TextIO

import numpy as np

from mlic.data.formats._paths import as_bool, image_root, safe_relative
from mlic.data.table import UNKNOWN, LabelTable
from mlic.errors import DataError

CONFIDENCE = {"1": 1, "0": 0, "1.0": 1, "0.0": 0}


def _open(path: Path, what: str) -> TextIO:
    try:
        # newline="": the csv module handles quoted fields with line breaks itself.
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise DataError(f"{what} not found", path) from None
    except OSError as e:
        raise DataError(f"cannot read {what}: {e}", path) from None


def read_class_descriptions(path: Path) -> tuple[list[str], list[str]]:
    """MIDs and display names, in file order; repeated display names become ``Name (MID)``.

    Names are made unique over the whole file, not over the classes a split uses, so the same
    MID gets the same name in the training and the validation table.
    """
    mids: list[str] = []
    names: list[str] = []
    with _open(path, "class descriptions file") as f:
        reader = csv.reader(f)
        try:
            for row in reader:
                if not row:
                    continue
                if len(row) != 2:
                    raise DataError(f"line {reader.line_num}: expected LabelName,DisplayName, "
                                    f"got {row!r}", path)
                if not mids and [c.strip() for c in row] == ["LabelName", "DisplayName"]:
                    continue  # the V6 header; the boxable file has none
                mids.append(row[0].strip())
                names.append(row[1].strip())
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"malformed CSV near line {reader.line_num} ({e})", path) from None
    repeated_mids = [m for m, c in Counter(mids).items() if c > 1]
    if repeated_mids:
        raise DataError(f"label {repeated_mids[0]!r} is described twice", path)
    counts = Counter(names)
    names = [f"{n} ({m})" if counts[n] > 1 else n for m, n in zip(mids, names)]
    return mids, names


def _find_descriptions(path: Path) -> Path:
    found = [p for p in sorted(path.parent.glob("*class-descriptions*.csv")) if p != path]
    if len(found) != 1:
        which = f"found {', '.join(p.name for p in found)}" if found else "none found"
        raise DataError("give the class descriptions file with the 'classes' option "
                        f"(looked for one *class-descriptions*.csv next to it: {which})", path)
    return found[0]


def load_openimages(path: str | Path, root: str | Path | None = None,
                    classes: str | Path | None = None, image_ext: str = ".jpg",
                    all_classes: bool = False, allow_outside_root: bool = False) -> LabelTable:
    """Read an image-level labels CSV; ``all_classes`` keeps classes the file never mentions."""
    path = Path(path)
    all_classes = as_bool(all_classes, "all_classes", path)
    allow_outside_root = as_bool(allow_outside_root, "allow_outside_root", path)
    descriptions = Path(classes).expanduser() if classes is not None else _find_descriptions(path)
    mids, names = read_class_descriptions(descriptions)
    index_of_mid = {m: i for i, m in enumerate(mids)}
    root = image_root(root, path.parent)

    # Millions of rows: keep (image row, 2 * class + confidence) pairs in compact typed arrays,
    # not lists of Python ints, and look everything up through local names in the hot loop.
    rows, codes = array("l"), array("l")
    add_row, add_code = rows.append, codes.append
    row_of: dict[str, int] = {}
    paths: list[str] = []
    code_of = {(mid, conf): 2 * i + value for mid, i in index_of_mid.items()
               for conf, value in CONFIDENCE.items()}
    with _open(path, "labels file") as f:
        reader = csv.reader(f)
        try:
            header = [c.strip() for c in next(reader, [])]
            missing = [c for c in ("ImageID", "LabelName", "Confidence") if c not in header]
            if missing:
                raise DataError(f"header {header!r} lacks {', '.join(missing)} "
                                "(expected ImageID,Source,LabelName,Confidence)", path)
            c_image, c_label, c_conf = (header.index(c) for c in ("ImageID", "LabelName",
                                                                  "Confidence"))
            width = len(header)
            for row in reader:
                if len(row) != width:
                    if not row:
                        continue
                    raise DataError(f"line {reader.line_num}: {len(row)} fields, the header has "
                                    f"{width}", path)
                code = code_of.get((row[c_label], row[c_conf]))
                if code is None:  # find out which of the two is wrong
                    mid, conf = row[c_label], row[c_conf]
                    problem = (f"label {mid!r} is not in {descriptions.name}"
                               if mid not in index_of_mid else
                               f"confidence {conf!r}, expected 0 or 1")
                    raise DataError(f"line {reader.line_num}: {problem}", path)
                image = row[c_image]
                r = row_of.get(image)
                if r is None:  # several rows per image are the norm: they merge into one row
                    rel = safe_relative(image + image_ext, root, f"{path}, line {reader.line_num}",
                                        allow_outside_root)
                    r = row_of[image] = len(paths)
                    paths.append(rel)
                add_row(r)
                add_code(code)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"malformed CSV near line {reader.line_num} ({e})", path) from None

    rows_np, codes_np = np.frombuffer(rows, dtype="l"), np.frombuffer(codes, dtype="l")
    labels_np, values_np = codes_np // 2, codes_np % 2
    used = np.arange(len(mids)) if all_classes else np.unique(labels_np)
    column = np.full(len(mids), -1, dtype=np.int64)
    column[used] = np.arange(len(used))
    targets = np.full((len(paths), len(used)), UNKNOWN, dtype=np.int8)
    for value in (0, 1):  # negatives first, so a label verified both ways ends up positive
        pick = values_np == value
        targets[rows_np[pick], column[labels_np[pick]]] = value
    return LabelTable(paths, [names[i] for i in used], targets, root, str(path))
