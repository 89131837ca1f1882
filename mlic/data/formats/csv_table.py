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
``root`` is given. Other columns (exports often add some) are ignored, with a ``DataWarning``.
``save_csv`` writes the same format, so a ``LabelTable`` round-trips.

A wrong ``separator`` would silently make each combination of labels one label ("cat;dog"); when
no image has two labels and names hold another common separator, that is an error that says so.
"""
from __future__ import annotations

import csv
import warnings
from array import array
from pathlib import Path
from typing import Sequence

import numpy as np

from mlic.data.formats._paths import as_bool, image_root, read_text, safe_relative
from mlic.data.sparse_rows import SparseRows
from mlic.data.table import POSITIVE, UNKNOWN, LabelTable, label_name
from mlic.errors import DataError, DataWarning

COLUMNS = ("image", "labels", "unknown")
WRITE_BLOCK = 4096  # images per dense block when writing
SEPARATORS = ("|", ";", ",")  # the separators label lists are commonly written with


def read_class_list(classes: str | Path | Sequence[str]) -> list[str]:
    """Label names from a list, or from a text file with one name per line."""
    if isinstance(classes, (str, Path)):
        source = Path(classes).expanduser()
        names = [label_name(line.strip()) for line in read_text(source, "class list").splitlines()]
        names = [n for n in names if n]
    elif isinstance(classes, (list, tuple)):
        source, names = "classes option", [label_name(n) for n in classes]
    else:
        raise DataError(f"classes must be a list of names or a file of them, got {classes!r}")
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
    col = {name: header.index(name) for name in COLUMNS if header.count(name) == 1}
    if "image" not in col or "labels" not in col or any(header.count(n) > 1 for n in COLUMNS):
        raise DataError(f"header is {','.join(header)!r}, expected image,labels or "
                        "image,labels,unknown (once each; other columns are ignored)", path)
    ignored = [name or f"column {j + 1}" for j, name in enumerate(header) if name not in COLUMNS]
    if ignored:
        warnings.warn(f"{path}: ignored columns {', '.join(map(repr, ignored))} (mlic reads "
                      f"{', '.join(c for c in COLUMNS if c in col)})", DataWarning, stacklevel=3)

    def names_in(cell: str) -> list[str]:
        return [label_name(name.strip()) for name in cell.split(separator) if name.strip()]

    # Millions of rows: labels are kept as (row, label id) pairs in typed arrays, ids given in
    # order of first sight and renumbered to the final label order at the end.
    paths: list[str] = []
    id_of: dict[str, int] = {} if classes is None else {n: j for j, n in enumerate(names)}
    pairs = {POSITIVE: (array("q"), array("q")), UNKNOWN: (array("q"), array("q"))}
    seen: dict[str, int] = {}
    several = False  # some image has two labels (see check_separator)
    try:
        for row in rows:
            line_no = rows.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                raise DataError(f"line {line_no}: {len(row)} fields, the header has "
                                f"{len(header)} (quote paths that contain commas)", path)
            row = row + [""] * (len(header) - len(row))  # trailing empty cells may be left out
            rel = safe_relative(row[col["image"]], root, f"{path}, line {line_no}",
                                allow_outside_root)
            if rel in seen:
                raise DataError(f"line {line_no}: image {rel!r} is listed twice (first on line "
                                f"{seen[rel]})", path)
            seen[rel] = line_no
            positive = names_in(row[col["labels"]])
            unknown = names_in(row[col["unknown"]]) if "unknown" in col else []
            both = set(positive) & set(unknown)
            if both:
                raise DataError(f"line {line_no}: {sorted(both)[0]!r} is both a label and unknown",
                                path)
            several = several or len(positive) + len(unknown) > 1
            for state, found in ((POSITIVE, positive), (UNKNOWN, unknown)):
                add_row, add_id = pairs[state][0].append, pairs[state][1].append
                for name in found:
                    j = id_of.get(name)
                    if j is None:
                        if classes is not None:
                            hint = separator_hint(name, set(names), separator)
                            raise DataError(f"line {line_no}: label {name!r} is not in "
                                            f"{known}{hint}", path)
                        j = id_of[name] = len(id_of)
                    add_row(len(paths))
                    add_id(j)
            paths.append(rel)
    except csv.Error as e:
        raise DataError(f"malformed CSV near line {rows.line_num} ({e})", path) from None

    new_id = np.arange(len(id_of))
    if classes is None:
        names = sorted(id_of)
        check_separator(names, several, separator, path)
        new_id[[id_of[n] for n in names]] = np.arange(len(names))
    n, c = len(paths), len(names)
    positives, unknowns = (
        SparseRows.from_pairs(np.frombuffer(r, dtype=np.int64), new_id[np.frombuffer(j, np.int64)],
                              n, c) for r, j in (pairs[POSITIVE], pairs[UNKNOWN]))
    return LabelTable.from_sparse(paths, names, positives, unknowns=unknowns, root=root,
                                  source=str(path))


def separator_hint(name: str, known: set[str], separator: str) -> str:
    """"; is the separator ';'?" when ``name`` splits on a common separator into known labels."""
    for other in SEPARATORS:
        parts = [p.strip() for p in name.split(other)]
        if other != separator and len(parts) > 1 and all(p in known for p in parts):
            return f"; is the separator {other!r}? (option separator, now {separator!r})"
    return ""


def check_separator(names: list[str], several: bool, separator: str, path: Path) -> None:
    """No image with two labels (``several`` False), yet label names that hold another separator:
    a wrong separator made each combination one label, which training would silently learn."""
    if several:
        return
    for other in SEPARATORS:
        joined = [n for n in names if other != separator and other in n]
        if joined and len(joined) >= len(names) / 4:
            raise DataError(
                f"no image has two labels joined by the separator {separator!r}, but "
                f"{len(joined)} of {len(names)} label names contain {other!r} (e.g. "
                f"{joined[0]!r}): each combination would be one label; set the option separator="
                f"{other!r}, or give the classes option if these names are right", path)


def save_csv(table: LabelTable, path: str | Path, separator: str = "|",
             classes_path: str | Path | None = None, absolute_paths: bool = False) -> None:
    """Write ``table`` as an ``image,labels[,unknown]`` CSV; ``absolute_paths``: the images'
    absolute paths (read the file back with ``allow_outside_root``), else the table's own.

    Reading it back without ``classes`` gives the labels sorted, without those no image has; pass
    ``classes_path`` to also write the label names in order, and give it to ``load_csv``.
    """
    path = Path(path)
    bad = [n for n in table.label_names if separator in n or n != n.strip() or not n]
    if bad:
        raise DataError(f"label name {bad[0]!r} cannot be written (empty, surrounding spaces or "
                        f"containing the separator {separator!r})", path)
    has_unknown = bool(table.count(UNKNOWN, axis=0).any())
    names = np.asarray(table.label_names, dtype=object)
    try:
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(COLUMNS if has_unknown else COLUMNS[:2])
            for start in range(0, len(table), WRITE_BLOCK):  # dense rows a block at a time
                block = np.arange(start, min(start + WRITE_BLOCK, len(table)))
                for i, row in zip(block, table.rows(block)):
                    image = str(table.image_path(i).resolve()) if absolute_paths else table.paths[i]
                    cells = [image, separator.join(names[row == POSITIVE])]
                    if has_unknown:
                        cells.append(separator.join(names[row == UNKNOWN]))
                    writer.writerow(cells)
        if classes_path is not None:
            Path(classes_path).write_text("".join(f"{n}\n" for n in table.label_names),
                                          encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot write: {e}", e.filename or path) from None
