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

The labels file covers every class (19,957 in V6), the descriptions name them all, and a model
is trained on a subset: the 601 boxable classes (``class-descriptions-boxable.csv``), the 9,605
trainable ones (``oidv6-classes-trainable.txt``, one MID a line) or a user's own. ``keep`` names
that list: a class descriptions CSV, a text file with one MID a line, or a list of MIDs. Label
rows of other classes are dropped and counted (not an error), images left with no label row are
left out, and the counts are a note on the table (``table.extra["notes"]``, printed by
``mlic data stats`` and logged at the start of training). Without ``keep``, a label missing from
the descriptions is an error, as before.

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
from mlic.data.string_array import StringArray
from mlic.data.sparse_rows import SparseRows
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


def read_keep_list(keep: str | Path | list | tuple) -> tuple[list[str], str]:
    """The MIDs of a keep list and what to call it in messages: a list of MIDs, a class
    descriptions CSV (its first column; header optional) or a text file of one MID a line."""
    if isinstance(keep, (list, tuple)):
        return [str(m).strip() for m in keep if str(m).strip()], "the keep option"
    path = Path(keep).expanduser()
    if path.suffix.lower() == ".csv":
        return read_class_descriptions(path)[0], path.name
    mids: list[str] = []
    with _open(path, "keep list") as f:
        try:
            for line in f:
                mid = line.split(",")[0].strip()
                if mid and mid != "LabelName":
                    mids.append(mid)
        except UnicodeDecodeError as e:
            raise DataError(f"cannot read the keep list: {e}", path) from None
    return mids, path.name


def load_openimages(path: str | Path, root: str | Path | None = None,
                    classes: str | Path | None = None, image_ext: str = ".jpg",
                    all_classes: bool = False, allow_outside_root: bool = False,
                    keep: str | Path | list | None = None) -> LabelTable:
    """Read an image-level labels CSV; ``all_classes`` keeps classes the file never mentions;
    ``keep`` (a file or list of MIDs) keeps only those classes, dropping the others' rows."""
    path = Path(path)
    all_classes = as_bool(all_classes, "all_classes", path)
    allow_outside_root = as_bool(allow_outside_root, "allow_outside_root", path)
    descriptions = Path(classes).expanduser() if classes is not None else _find_descriptions(path)
    mids, names = read_class_descriptions(descriptions)
    index_of_mid = {m: i for i, m in enumerate(mids)}
    kept = None
    if keep is not None:
        keep_mids, keep_name = read_keep_list(keep)
        unnamed = [m for m in keep_mids if m not in index_of_mid]
        if unnamed:
            raise DataError(f"{len(unnamed)} classes of {keep_name} are not in "
                            f"{descriptions.name}, so they have no name (e.g. {unnamed[0]!r}); "
                            f"give the full descriptions file as 'classes'", path)
        kept = np.zeros(len(mids), dtype=bool)
        kept[[index_of_mid[m] for m in keep_mids]] = True
    root = image_root(root, path.parent)

    # Millions of rows: keep (image run, 2 * class + confidence) pairs in compact typed arrays,
    # not lists of Python ints, and look everything up through local names in the hot loop.
    runs, codes = array("l"), array("l")
    add_run, add_code = runs.append, codes.append
    run_images: list[str] = []  # the image of each run of consecutive rows (files are sorted)
    new_run = run_images.append
    code_of = {(mid, conf): 2 * i + value for mid, i in index_of_mid.items()
               for conf, value in CONFIDENCE.items() if kept is None or kept[i]}
    dropped: Counter = Counter()  # label rows of classes not kept, per MID
    previous = previous_dropped = None
    dropped_images: list[str] = []
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
                if code is None:  # a class not kept, or find out which of the two is wrong
                    mid, conf = row[c_label], row[c_conf]
                    if kept is not None and not (mid in index_of_mid and kept[index_of_mid[mid]]):
                        dropped[mid] += 1
                        if row[c_image] != previous_dropped:  # to count images left without labels
                            previous_dropped = row[c_image]
                            dropped_images.append(previous_dropped)
                        continue
                    problem = (f"label {mid!r} is not in {descriptions.name}"
                               if mid not in index_of_mid else
                               f"confidence {conf!r}, expected 0 or 1")
                    raise DataError(f"line {reader.line_num}: {problem}", path)
                image = row[c_image]
                if image != previous:  # rows of one image come together: one look-up a run
                    previous = image
                    new_run(image)
                add_run(len(run_images) - 1)
                add_code(code)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"malformed CSV near line {reader.line_num} ({e})", path) from None

    # Images in order of first appearance; an image whose rows are apart merges into one row.
    ids, first, run_image = np.unique(np.array(run_images, dtype=str), return_index=True,
                                      return_inverse=True)
    order = np.argsort(first, kind="stable")
    row_of_id = np.empty(len(ids), dtype=np.int64)
    row_of_id[order] = np.arange(len(ids))
    paths = image_paths(ids[order].tolist(), image_ext, root, path, allow_outside_root)
    rows_np = row_of_id[run_image.reshape(-1)][np.frombuffer(runs, dtype="l")]
    codes_np = np.frombuffer(codes, dtype="l")
    labels_np, values_np = codes_np // 2, codes_np % 2
    if all_classes:
        used = np.flatnonzero(kept) if kept is not None else np.arange(len(mids))
    else:
        used = np.unique(labels_np)
    column = np.full(len(mids), -1, dtype=np.int64)
    column[used] = np.arange(len(used))
    n, c = len(paths), len(used)
    positive = values_np == 1
    positives = SparseRows.from_pairs(rows_np[positive], column[labels_np[positive]], n, c)
    # A label verified both ways by different sources counts as positive.
    negatives = SparseRows.from_pairs(rows_np[~positive], column[labels_np[~positive]], n, c
                                      ).without(positives)
    extra = {}
    if kept is not None:
        left_out = len(np.setdiff1d(np.array(dropped_images, dtype=str), ids))
        extra["notes"] = [keep_note(int(kept.sum()), len(mids), dropped, keep_name,
                                    descriptions.name, left_out)]
    return LabelTable.from_sparse(paths, [names[i] for i in used], positives, negatives,
                                  fill=UNKNOWN, root=root, source=str(path), extra=extra)


def image_paths(ids: list[str], image_ext: str, root: Path, path: Path,
                allow_outside_root: bool) -> StringArray:
    """``<ImageID><image_ext>`` for every image; only IDs that are more than a plain name are
    checked against the root (real IDs are hexadecimal)."""
    out = []
    for image in ids:
        name = image + image_ext
        if "/" in name or "\\" in name or ":" in name or name.strip() != name or not image.strip():
            name = safe_relative(name, root, f"{path}, image {image!r}", allow_outside_root)
        out.append(name)
    return StringArray(out)


def keep_note(kept: int, described: int, dropped: Counter, keep_name: str,
              descriptions_name: str, left_out: int) -> str:
    """"kept 601 of 19,957 classes; dropped 1,234,567 label rows of 19,356 classes not in ..."."""
    note = (f"kept {kept:,} of {described:,} classes ({descriptions_name}); dropped "
            f"{sum(dropped.values()):,} label rows of {len(dropped):,} classes not in {keep_name}")
    if left_out:
        note += f"; {left_out:,} images with labels of those classes only are left out"
    return note
