"""COCO 2014/2017 instances JSON (``annotations/instances_train2014.json``).

The file is one JSON object::

    {"images":      [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", ...}, ...],
     "annotations": [{"id": 1, "image_id": 9, "category_id": 51, "bbox": [...], "iscrowd": 0}, ...],
     "categories":  [{"id": 1, "name": "person", "supercategory": "person"}, ...]}

An image is positive for a category when at least one of its annotations has that category, and
negative otherwise (COCO annotates every instance of its 80 categories). Labels are the category
names ordered by category id, which is the order the multi-label literature uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlic.data.formats._paths import as_bool, image_root, read_json, safe_relative
from mlic.data.table import POSITIVE, LabelTable
from mlic.errors import DataError


def _entries(data: dict, key: str, path: Path) -> list[dict]:
    value = data.get(key)
    if not isinstance(value, list):
        hint = " (image_info test files carry no labels)" if key == "annotations" else ""
        raise DataError(f"no {key!r} list in the COCO file{hint}", path)
    for k, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise DataError(f"{key}[{k}] is {type(entry).__name__}, expected an object", path)
    return value


def _field(entry: dict, name: str, kind: type | tuple, where: str, path: Path) -> Any:
    value = entry.get(name)
    # bool is an int subclass; an id of `true` is a broken file, not id 1.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: field {name!r} is {value!r}, expected "
                        f"{getattr(kind, '__name__', 'an id')}", path)
    return value


def guess_coco_root(path: Path) -> Path:
    """``.../annotations/instances_train2014.json`` -> ``.../train2014`` when that folder exists."""
    split = path.stem.rsplit("_", 1)[-1] if "_" in path.stem else ""
    if split:
        for candidate in (path.parent.parent / split, path.parent / split):
            if candidate.is_dir():
                return candidate
    return path.parent


def load_coco(path: str | Path, root: str | Path | None = None, include_crowd: bool = True,
              allow_outside_root: bool = False) -> LabelTable:
    """Read a COCO instances file; ``include_crowd=False`` ignores ``iscrowd`` annotations."""
    path = Path(path)
    include_crowd = as_bool(include_crowd, "include_crowd", path)
    allow_outside_root = as_bool(allow_outside_root, "allow_outside_root", path)
    data = read_json(path, "COCO annotation file")
    if not isinstance(data, dict):
        raise DataError("a COCO file must be a JSON object with images, annotations, categories",
                        path)
    root = image_root(root, guess_coco_root(path))
    ids = (int, str)

    names_by_id: dict[Any, str] = {}
    for k, cat in enumerate(_entries(data, "categories", path)):
        where = f"categories[{k}]"
        cid = _field(cat, "id", ids, where, path)
        if cid in names_by_id:
            raise DataError(f"{where}: category id {cid!r} appears twice", path)
        names_by_id[cid] = _field(cat, "name", str, where, path)
    # Sort ids by (type, value) so a file mixing int and str ids cannot make sorted() fail.
    cat_ids = sorted(names_by_id, key=lambda c: (isinstance(c, str), c))
    column = {cid: j for j, cid in enumerate(cat_ids)}

    row: dict[Any, int] = {}
    paths: list[str] = []
    seen_files: dict[str, int] = {}
    for k, image in enumerate(_entries(data, "images", path)):
        where = f"images[{k}]"
        iid = _field(image, "id", ids, where, path)
        rel = safe_relative(_field(image, "file_name", str, where, path), root,
                            f"{path}, {where}", allow_outside_root)
        if iid in row:
            raise DataError(f"{where}: image id {iid!r} appears twice", path)
        if rel in seen_files:
            raise DataError(f"{where}: file {rel!r} is also images[{seen_files[rel]}]", path)
        row[iid], seen_files[rel] = len(paths), k
        paths.append(rel)

    targets = np.zeros((len(paths), len(cat_ids)), dtype=np.int8)
    for k, ann in enumerate(_entries(data, "annotations", path)):
        where = f"annotations[{k}] (id {ann.get('id')!r})"
        iid = _field(ann, "image_id", ids, where, path)
        cid = _field(ann, "category_id", ids, where, path)
        if iid not in row:
            raise DataError(f"{where}: image_id {iid!r} is not in 'images'", path)
        if cid not in column:
            raise DataError(f"{where}: unknown category_id {cid!r} (not in 'categories')", path)
        if include_crowd or not ann.get("iscrowd"):
            targets[row[iid], column[cid]] = POSITIVE
    return LabelTable(paths, [names_by_id[c] for c in cat_ids], targets, root, str(path))
