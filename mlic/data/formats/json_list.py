"""A JSON list of images with their labels (the common format of multi-label reference code).

The file is one JSON object::

    {"classes": ["aeroplane", "bicycle", ...],
     "images": [["2007_000032.jpg", ["aeroplane", 14]],
                {"path": "2007_000033.jpg", "labels": [0], "unknown": ["person"]},
                ...]}

Each image is either a ``[path, labels]`` pair or an object with ``path``, ``labels`` and an
optional ``unknown`` list. Labels are class names or integer indices into ``classes``; labels not
listed are negative, those in ``unknown`` are -1. Paths are relative to the JSON's folder unless a
``root`` is given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlic.data.formats._paths import as_bool, image_root, read_json, safe_relative
from mlic.data.table import POSITIVE, UNKNOWN, LabelTable, label_name
from mlic.errors import DataError


def _columns(labels: Any, classes: list[str], column: dict[str, int], where: str,
             path: Path) -> list[int]:
    if not isinstance(labels, list):
        raise DataError(f"{where}: labels must be a list, got {labels!r}", path)
    out = []
    for label in labels:
        if isinstance(label, str):
            label = label_name(label)
            if label not in column:
                raise DataError(f"{where}: unknown class {label!r}", path)
            out.append(column[label])
        elif isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < len(classes):
                raise DataError(f"{where}: class index {label} out of range "
                                f"(there are {len(classes)} classes)", path)
            out.append(label)
        else:
            raise DataError(f"{where}: a label must be a class name or index, got {label!r}", path)
    return out


def load_json_list(path: str | Path, root: str | Path | None = None,
                   allow_outside_root: bool = False) -> LabelTable:
    """Read a ``{"classes": [...], "images": [...]}`` file."""
    path = Path(path)
    allow_outside_root = as_bool(allow_outside_root, "allow_outside_root", path)
    data = read_json(path, "JSON label file")
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) \
            or not isinstance(data.get("images"), list):
        raise DataError('expected an object with a "classes" list and an "images" list', path)
    classes = data["classes"]
    if not all(isinstance(c, str) and c for c in classes):
        raise DataError('"classes" must be a list of non-empty names', path)
    classes = [label_name(c) for c in classes]
    column = {name: j for j, name in enumerate(classes)}
    root = image_root(root, path.parent)

    paths: list[str] = []
    targets = np.zeros((len(data["images"]), len(classes)), dtype=np.int8)
    seen: dict[str, int] = {}
    for k, entry in enumerate(data["images"]):
        where = f"images[{k}]"
        if isinstance(entry, list) and len(entry) == 2:
            image, labels, unknown = entry[0], entry[1], []
        elif isinstance(entry, dict) and "path" in entry:
            extra = set(entry) - {"path", "labels", "unknown"}
            if extra:
                raise DataError(f"{where}: unexpected keys {sorted(extra)}", path)
            image, labels = entry["path"], entry.get("labels", [])
            unknown = entry.get("unknown", [])
        else:
            raise DataError(f"{where}: expected [path, labels] or "
                            f'{{"path": ..., "labels": [...]}}, got {entry!r}', path)
        rel = safe_relative(image, root, f"{path}, {where}", allow_outside_root)
        if rel in seen:
            raise DataError(f"{where}: image {rel!r} is also images[{seen[rel]}]", path)
        seen[rel] = k
        positive = _columns(labels, classes, column, where, path)
        unknown_cols = _columns(unknown, classes, column, where, path)
        both = set(positive) & set(unknown_cols)
        if both:
            raise DataError(f"{where}: {classes[min(both)]!r} is both a label and unknown", path)
        targets[k, positive] = POSITIVE
        targets[k, unknown_cols] = UNKNOWN
        paths.append(rel)
    return LabelTable(paths, classes, targets, root, str(path))
