"""The plain CSV format: one row per image, its labels in one cell.

::

    image,labels,unknown
    cats/001.jpg,cat|sofa,
    cats/002.jpg,,cat
    dogs/003.jpg,dog|person,sofa

``labels`` lists the positive labels separated by ``|`` (empty: no label, the image is all
negative); the optional ``unknown`` column lists labels whose state nobody knows (-1). Label
order is the ``classes`` option (names, or a text file with one name per line) when given, else
the sorted names found in the file. Image paths are relative to the CSV's folder unless a
``root`` is given. ``save_csv`` writes the same format, so a ``LabelTable`` round-trips.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from mlic.data.formats._paths import as_bool, image_root, read_text, safe_relative
from mlic.data.table import POSITIVE, UNKNOWN, LabelTable
from mlic.errors import DataError

COLUMNS = ("image", "labels", "unknown")


def read_class_list(classes: str | Path | Sequence[str]) -> list[str]:
    """Label names from a list, or from a text file with one name per line."""
    if isinstance(classes, (str, Path)):
        source = Path(classes).expanduser()
        names = [line.strip() for line in read_text(source, "class list").splitlines()]
        names = [n for n in names if n]
    else:
        source, names = "classes option", [str(n) for n in classes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"class {repeated[0]!r} is listed twice", source)
    return names


def load_csv(path: str | Path, root: str | Path | None = None, separator: str = "|",
             classes: str | Path | Sequence[str] | None = None,
             allow_outside_root: bool = False) -> LabelTable:
    """Read an ``image,labels[,unknown]`` CSV file."""
    path = Path(path)
    allow_outside_root = as_bool(allow_outside_root, "allow_outside_root", path)
    if not separator:
        raise DataError("the label separator must not be empty", path)
    root = image_root(root, path.parent)
    if classes is not None:  # read first: a broken class list is reported before the rows
        names = read_class_list(classes)
        known = f"the classes file {Path(classes).name}" if isinstance(classes, (str, Path)) \
            else "the classes option"
    rows = csv.reader(read_text(path, "CSV label file").splitlines())
    header = [c.strip() for c in next(rows, [])]
    if header[:2] != ["image", "labels"] or header[2:] not in ([], ["unknown"]):
        raise DataError(f"header is {','.join(header)!r}, expected image,labels or "
                        "image,labels,unknown", path)

    def names_in(cell: str) -> list[str]:
        return [name.strip() for name in cell.split(separator) if name.strip()]

    paths: list[str] = []
    entries: list[tuple[list[str], list[str], int]] = []
    seen: dict[str, int] = {}
    try:
        for row in rows:
            line_no = rows.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                raise DataError(f"line {line_no}: {len(row)} fields, the header has "
                                f"{len(header)} (quote paths that contain commas)", path)
            row = row + [""] * (len(header) - len(row))  # trailing empty cells may be left out
            rel = safe_relative(row[0], root, f"{path}, line {line_no}", allow_outside_root)
            if rel in seen:
                raise DataError(f"line {line_no}: image {rel!r} is listed twice (first on line "
                                f"{seen[rel]})", path)
            seen[rel] = line_no
            positive, unknown = names_in(row[1]), names_in(row[2]) if len(header) > 2 else []
            both = set(positive) & set(unknown)
            if both:
                raise DataError(f"line {line_no}: {sorted(both)[0]!r} is both a label and unknown",
                                path)
            paths.append(rel)
            entries.append((positive, unknown, line_no))
    except csv.Error as e:
        raise DataError(f"malformed CSV near line {rows.line_num} ({e})", path) from None

    if classes is None:
        names, known = sorted({n for pos, unk, _ in entries for n in pos + unk}), "the labels"
    column = {name: j for j, name in enumerate(names)}
    targets = np.zeros((len(paths), len(names)), dtype=np.int8)
    for i, (positive, unknown, line_no) in enumerate(entries):
        for state, found in ((POSITIVE, positive), (UNKNOWN, unknown)):
            for name in found:
                if name not in column:
                    raise DataError(f"line {line_no}: label {name!r} is not in {known}", path)
                targets[i, column[name]] = state
    return LabelTable(paths, names, targets, root, str(path))


def save_csv(table: LabelTable, path: str | Path, separator: str = "|",
             classes_path: str | Path | None = None) -> None:
    """Write ``table`` as an ``image,labels[,unknown]`` CSV.

    Reading it back without ``classes`` gives the labels sorted, without those no image has; pass
    ``classes_path`` to also write the label names in order, and give it to ``load_csv``.
    """
    path = Path(path)
    bad = [n for n in table.label_names if separator in n or n != n.strip() or not n]
    if bad:
        raise DataError(f"label name {bad[0]!r} cannot be written (empty, surrounding spaces or "
                        f"containing the separator {separator!r})", path)
    has_unknown = bool((table.targets == UNKNOWN).any())
    names = np.asarray(table.label_names, dtype=object)
    try:
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(COLUMNS if has_unknown else COLUMNS[:2])
            for image, row in zip(table.paths, table.targets):
                cells = [image, separator.join(names[row == POSITIVE])]
                if has_unknown:
                    cells.append(separator.join(names[row == UNKNOWN]))
                writer.writerow(cells)
        if classes_path is not None:
            Path(classes_path).write_text("".join(f"{n}\n" for n in table.label_names),
                                          encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot write: {e}", e.filename or path) from None
