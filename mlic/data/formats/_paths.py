"""Small helpers the format loaders share: reading annotation files and checking image paths.

Image paths inside annotation files are kept relative to the image root, so a table can be
moved with its images. An absolute path inside the root (``/data/x/img/1.png`` with root
``/data/x``) is taken as the relative path it names (``img/1.png``). A path that leaves the root
(``..``, or absolute elsewhere) usually means a wrong or hostile annotation file, so it is refused
unless the user opts in with ``allow_outside_root`` (then it is kept as written).
"""
from __future__ import annotations

import codecs
import json
import os
import posixpath
from pathlib import Path, PureWindowsPath
from typing import Any

from mlic.errors import DataError


def safe_relative(path_str: str, root: str | Path | None, source: object,
                  allow_outside_root: bool = False) -> str:
    """Return ``path_str`` as a normalised path relative to ``root``.

    ``source`` names the file (and entry) for the error message. The check is lexical, not
    ``resolve()``: image folders are often symlinks to other disks, which is fine.
    """
    if not isinstance(path_str, str) or not path_str.strip():
        raise DataError(f"image path must be a non-empty string, got {path_str!r}", source)
    text = path_str.strip()
    # Fast path for the common bare file name ("000005.jpg"): only ".." can leave the root.
    if "/" not in text and "\\" not in text and ":" not in text and text not in (".", ".."):
        return text
    # A Windows drive needs a ":" or a backslash ("C:\\x", "\\\\server\\share"), or starts with
    # "//", which is absolute here anyway: pathlib is asked only then, as it costs microseconds
    # per call, which on millions of rows is most of the parsing time.
    drive = bool(PureWindowsPath(text).drive) if ("\\" in text or ":" in text) else False
    posix = text.replace("\\", "/") if drive else text
    normal = posixpath.normpath(posix)
    outside = posix.startswith("/") or drive or normal == ".." or normal.startswith("../")
    if not outside:
        return normal
    inside = _inside_root(normal, root) if posix.startswith("/") else None
    if inside is not None:
        return inside
    if allow_outside_root:
        return text
    raise DataError(f"image path {text!r} is outside the image root {root}; "
                    "set allow_outside_root: true if that is intended", source)


def _inside_root(path: str, root: str | Path | None) -> str | None:
    """An absolute ``path`` under ``root`` as a path relative to it, else None: compared as
    written first, then with symbolic links resolved (a root reached through a link)."""
    if root is None:
        return None
    for base, target in ((os.path.abspath(root), path),
                         (os.path.realpath(root), os.path.realpath(path))):
        relative = posixpath.relpath(target, base)
        if relative != "." and relative != ".." and not relative.startswith("../"):
            return relative
    return None


def image_root(root: str | Path | None, default: Path) -> Path:
    """The user's image folder if given, else the format's default."""
    return Path(root).expanduser() if root is not None else default


def read_text(path: Path, what: str = "annotation file") -> str:
    """Whole text of a UTF-8 file, with the problem named instead of an OSError traceback."""
    try:
        # utf-8-sig: files saved by Windows tools often start with a byte-order mark.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{what} not found", path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"cannot read {what}: {not_utf8(e)}", path) from None
    except OSError as e:
        raise DataError(f"cannot read {what}: {e}", path) from None


def not_utf8(error: UnicodeDecodeError) -> str:
    """What to tell about a file that is not UTF-8: spreadsheets save UTF-16 or Latin-1."""
    head = bytes(error.object[:4])
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        kind = "UTF-16 text"
    else:
        kind = f"byte 0x{error.object[error.start]:02x} at offset {error.start} is not UTF-8 " \
               f"(Latin-1 or another legacy encoding?)"
    return f"not UTF-8 text: {kind}; save it as UTF-8"


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; damaged or absurdly nested JSON is a DataError, not a traceback."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as e:
        raise DataError(f"not valid JSON ({e})", path) from None
    except RecursionError:
        raise DataError("JSON nested deeper than Python can read", path) from None


def as_bool(value: object, name: str, source: object) -> bool:
    """A yes/no option; ``mlic data stats --option key=false`` hands it over as a string."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise DataError(f"option {name}={value!r}: expected true or false", source)
