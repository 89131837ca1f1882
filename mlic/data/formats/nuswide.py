"""NUS-WIDE, in the layout of the official release.

Layout::

    NUS-WIDE/Concepts81.txt                  one concept per line (or in ConceptsList/)
    NUS-WIDE/ImageList/TrainImagelist.txt    one image a line, Windows style: actor\\0001_21244.jpg
    NUS-WIDE/ImageList/TestImagelist.txt
    NUS-WIDE/TrainTestLabels/Labels_airport_Train.txt    one 0/1 per line, in image list order
    NUS-WIDE/Flickr/actor/0001_2124494179.jpg    the images (the default root)

Every concept has its own label file whose line i belongs to line i of the image list, so a file
with a different number of lines would silently shift every label: it is an error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mlic.data.formats._paths import as_bool, image_root, read_text, safe_relative
from mlic.data.table import LabelTable
from mlic.errors import DataError


def _lines(path: Path, what: str) -> list[str]:
    # Trailing blank lines are an artefact of the editor; blank lines inside still count.
    return read_text(path, what).rstrip().splitlines()


def _concepts(path: Path) -> tuple[list[str], Path]:
    for candidate in (path / "Concepts81.txt", path / "ConceptsList" / "Concepts81.txt"):
        if candidate.is_file():
            names = [line.strip() for line in _lines(candidate, "concept list")]
            names = [n for n in names if n]
            if not names:
                raise DataError("concept list is empty", candidate)
            return names, candidate
    raise DataError("no Concepts81.txt here or in ConceptsList/", path)


def _label_column(label_file: Path, count: int, image_list: Path) -> np.ndarray:
    """One concept's 0/1 column, checked against the image list's length."""
    lines = _lines(label_file, "label file")
    if len(lines) != count:
        raise DataError(f"{len(lines)} lines but {image_list.name} has {count} images", label_file)
    values = np.array([line.strip() for line in lines])
    bad = np.flatnonzero((values != "0") & (values != "1"))
    if bad.size:
        raise DataError(f"line {bad[0] + 1}: expected 0 or 1, got {values[bad[0]]!r}", label_file)
    return values == "1"


def load_nuswide(path: str | Path, split: str = "Train", root: str | Path | None = None,
                 allow_outside_root: bool = False) -> LabelTable:
    """Read the ``Train`` or ``Test`` split of NUS-WIDE's 81 concepts."""
    path = Path(path)
    allow_outside_root = as_bool(allow_outside_root, "allow_outside_root", path)
    split = str(split).capitalize()
    if split not in ("Train", "Test"):
        raise DataError(f"split={split!r}; NUS-WIDE has Train and Test", path)
    root = image_root(root, path / "Flickr")
    names, _ = _concepts(path)
    image_list = path / "ImageList" / f"{split}Imagelist.txt"

    paths: list[str] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(_lines(image_list, "image list"), 1):
        where = f"{image_list}, line {line_no}"
        rel = safe_relative(line.strip().replace("\\", "/"), root, where, allow_outside_root)
        if rel in seen:
            raise DataError(f"line {line_no}: image {rel!r} is listed twice (first on line "
                            f"{seen[rel]})", image_list)
        seen[rel] = line_no
        paths.append(rel)

    targets = np.zeros((len(paths), len(names)), dtype=np.int8)
    for j, name in enumerate(names):
        label_file = path / "TrainTestLabels" / f"Labels_{name}_{split}.txt"
        if not label_file.is_file():
            raise DataError(f"label file of concept {name!r} not found", label_file)
        targets[:, j] = _label_column(label_file, len(paths), image_list)
    return LabelTable(paths, names, targets, root, str(image_list))
