"""PASCAL VOC 2007/2012 folder (``VOCdevkit/VOC2007``).

Layout::

    VOC2007/ImageSets/Main/trainval.txt   one image id per line ("000005")
    VOC2007/Annotations/000005.xml        <annotation><filename>000005.jpg</filename>
                                            <object><name>chair</name><difficult>0</difficult>...
    VOC2007/JPEGImages/000005.jpg

An image is positive for a class when it has a non-difficult object of that class. A class seen
only on "difficult" objects is ambiguous by VOC's own definition, so by default it is unknown (-1)
and neither rewarded nor punished; ``difficult="positive"`` / ``"negative"`` choose otherwise.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mlic.data.formats._paths import as_bool, image_root, read_text, safe_relative
from mlic.data.table import NEGATIVE, POSITIVE, UNKNOWN, LabelTable
from mlic.errors import DataError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
DIFFICULT_STATES = {"unknown": UNKNOWN, "positive": POSITIVE, "negative": NEGATIVE}


def _parse_xml(xml_path: Path) -> tuple[str | None, list[tuple[str, bool]]]:
    """The ``<filename>`` and the (class name, difficult) of every object of one annotation."""
    try:
        tree = ET.fromstring(read_text(xml_path, "VOC annotation"))
    except ET.ParseError as e:
        raise DataError(f"malformed XML ({e})", xml_path) from None
    if tree.tag != "annotation":
        raise DataError(f"root element is <{tree.tag}>, expected <annotation>", xml_path)
    filename = (tree.findtext("filename") or "").strip() or None
    objects = []
    for k, obj in enumerate(tree.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"object {k} has no <name>", xml_path)
        flag = (obj.findtext("difficult") or "0").strip()  # VOC2012 omits it on some objects
        if flag not in ("0", "1"):
            raise DataError(f"object {k} ({name}): <difficult> is {flag!r}, expected 0 or 1",
                            xml_path)
        objects.append((name, flag == "1"))
    return filename, objects


def load_voc(path: str | Path, split: str = "trainval", root: str | Path | None = None,
             difficult: str = "unknown", allow_outside_root: bool = False) -> LabelTable:
    """Read the images of ``ImageSets/Main/<split>.txt`` with their 20 class labels."""
    path = Path(path)
    allow_outside_root = as_bool(allow_outside_root, "allow_outside_root", path)
    if difficult not in DIFFICULT_STATES:
        raise DataError(f"difficult={difficult!r}; expected one of {', '.join(DIFFICULT_STATES)}",
                        path)
    root = image_root(root, path / "JPEGImages")
    split_file = path / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        found = sorted(p.stem for p in split_file.parent.glob("*.txt") if "_" not in p.stem)
        raise DataError(f"no split {split!r} (available: {', '.join(found) or 'none'})",
                        split_file)
    column = {name: j for j, name in enumerate(VOC_CLASSES)}
    difficult_state = DIFFICULT_STATES[difficult]

    paths: list[str] = []
    rows: list[np.ndarray] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(read_text(split_file, "split file").splitlines(), 1):
        # Per-class split files ("aeroplane_trainval.txt") have "id  1"; the id is the first word.
        image_id = line.split()[0] if line.split() else ""
        if not image_id:
            continue
        xml_path = path / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise DataError(f"annotation of image {image_id!r} ({split_file.name}, line {line_no}) "
                            "not found", xml_path)
        filename, objects = _parse_xml(xml_path)
        rel = safe_relative(filename or f"{image_id}.jpg", root, xml_path, allow_outside_root)
        if rel in seen:
            raise DataError(f"line {line_no}: image {rel!r} is listed twice (first on line "
                            f"{seen[rel]})", split_file)
        seen[rel] = line_no

        row = np.full(len(VOC_CLASSES), NEGATIVE, dtype=np.int8)
        for name, is_difficult in objects:
            if name not in column:
                raise DataError(f"unknown object class {name!r}; VOC classes are "
                                f"{', '.join(VOC_CLASSES)}", xml_path)
            j = column[name]
            if not is_difficult:
                row[j] = POSITIVE
            elif row[j] != POSITIVE:  # difficult never overrides a clear instance of the class
                row[j] = difficult_state
        paths.append(rel)
        rows.append(row)
    targets = np.stack(rows) if rows else np.zeros((0, len(VOC_CLASSES)), dtype=np.int8)
    return LabelTable(paths, list(VOC_CLASSES), targets, root, str(split_file))
