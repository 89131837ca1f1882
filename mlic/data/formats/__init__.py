"""Annotation formats. Each module reads one on-disk format into a ``LabelTable``.

A split is described by a *spec*: a mapping with ``format``, ``path`` and optional ``root`` (the
image folder) plus format options, or just a path whose format is detected. ``load_table`` is the
single entry point the rest of mlic uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from mlic.data.formats._paths import not_utf8, read_json
from mlic.data.formats.coco import load_coco
from mlic.data.formats.csv_table import load_csv
from mlic.data.formats.json_list import load_json_list
from mlic.data.formats.nuswide import load_nuswide
from mlic.data.formats.openimages import load_openimages
from mlic.data.formats.voc import load_voc
from mlic.data.table import LabelTable
from mlic.errors import DataError

FORMATS: dict[str, Callable[..., LabelTable]] = {
    "csv": load_csv,
    "coco": load_coco,
    "voc": load_voc,
    "nuswide": load_nuswide,
    "json": load_json_list,
    "openimages": load_openimages,
}


def detect_format(path: str | Path) -> str:
    """Guess the format of an annotation path from its shape on disk."""
    path = Path(path)
    if not path.exists():
        raise DataError("annotation path does not exist", path)
    if path.is_dir():
        if (path / "Annotations").is_dir() and (path / "ImageSets").is_dir():
            return "voc"
        if (path / "ImageList").is_dir() or (path / "TrainTestLabels").is_dir():
            return "nuswide"
        raise DataError("a folder that is neither a VOC2007 nor a NUS-WIDE root; "
                        "give data.*.format explicitly", path)
    if path.suffix.lower() == ".json":
        head = read_json(path, "annotation file")
        # COCO's keys; a COCO file that lacks one of them is still told about COCO's keys
        if isinstance(head, dict) and "images" in head and ("categories" in head
                                                             or "annotations" in head):
            return "coco"
        return "json"
    if path.suffix.lower() == ".csv":
        try:
            with open(path, "rb") as f:
                first = f.readline(65536)
            first.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataError(f"cannot read the CSV file: {not_utf8(e)}", path) from None
        except OSError as e:
            raise DataError(f"cannot read the CSV file ({e.strerror})", path) from None
        return "openimages" if b"ImageID" in first and b"LabelName" in first else "csv"
    raise DataError("cannot tell the annotation format from the file name; set format: "
                    + " | ".join(FORMATS), path)


def load_table(spec: str | Path | Mapping[str, Any]) -> LabelTable:
    """Read one split described by ``spec`` (see the module docstring)."""
    if isinstance(spec, (str, Path)):
        spec = {"path": spec}
    options = dict(spec)
    if "path" not in options:
        raise DataError(f"a data split needs a 'path' (got keys {sorted(options)})")
    path = Path(options.pop("path")).expanduser()
    fmt = options.pop("format", None) or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}", path)
    try:
        return FORMATS[fmt](path, **options)
    except TypeError as e:  # a wrong option name for this format
        raise DataError(f"bad options for format {fmt!r}: {e}", path) from None


__all__ = ["FORMATS", "detect_format", "load_table"] + [f.__name__ for f in FORMATS.values()]
