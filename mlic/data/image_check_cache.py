"""Which images already passed the decode check, so a resume or a later run does not decode them
again.

Decoding every image at every start costs about an epoch's decoding (hours on OpenImages); a
``stat`` costs microseconds. So the first ``data.check_images=decode`` of an annotation file
records, for every image that passed, its size, modification time and change time (ns), and later
checks decode only the images whose record is missing or differs: a file written over, touched,
replaced or copied in anew is checked again, and a failed image is never recorded, so it is
always checked again. Start-up after the first check costs one ``stat`` per image.

Where: ``$MLIC_CACHE_DIR/image_checks/<annotation file name>-<key>.npz`` (``MLIC_CACHE_DIR``
defaults to ``~/.cache/mlic``, as for label embeddings), one file per annotation file, image root
and pixel limit (the key hashes the three), shared by every run that reads that file. Deleting
the folder only costs one full check.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from mlic.atomic import atomic_write
from mlic.data.string_array import StringArray
from mlic.data.table import LabelTable

NOT_SEEN = -1  # a stat field of an image that could not be stat'ed, or did not pass


def default_cache_dir() -> Path:
    root = os.environ.get("MLIC_CACHE_DIR") or Path.home() / ".cache" / "mlic"
    return Path(root) / "image_checks"


def cache_file(table: LabelTable, max_pixels: int | None, cache_dir: Path) -> Path | None:
    """The cache file of ``table`` (None for a table not read from a file)."""
    if not table.source:
        return None
    source = os.path.abspath(table.source)
    root = os.path.abspath(table.root) if table.root is not None else ""
    key = hashlib.sha256(f"{source}\0{root}\0{max_pixels}".encode("utf-8", "surrogatepass"))
    return Path(cache_dir) / f"{Path(source).name}-{key.hexdigest()[:16]}.npz"


def stat_images(table: LabelTable) -> np.ndarray:
    """(N, 3) int64: size, mtime_ns and ctime_ns of every image; NOT_SEEN where stat fails."""
    root = str(table.root) if table.root is not None else ""
    out = np.full((len(table), 3), NOT_SEEN, dtype=np.int64)
    join, stat = os.path.join, os.stat
    for i, path in enumerate(table.paths):  # os.path.join keeps an absolute path as it is
        try:
            s = stat(join(root, path))
        except (OSError, ValueError):
            continue
        out[i] = (s.st_size, s.st_mtime_ns, s.st_ctime_ns)
    return out


def load_passed(path: Path | None, table: LabelTable) -> np.ndarray:
    """The recorded (N, 3) stats of the images of ``table`` that passed; NOT_SEEN rows for the
    others (and all of them when there is no readable cache)."""
    recorded = np.full((len(table), 3), NOT_SEEN, dtype=np.int64)
    if path is None:
        return recorded
    try:
        with np.load(path, allow_pickle=False) as saved:
            paths = StringArray.from_parts(saved["buffer"].tobytes(), saved["offsets"])
            stats = saved["stats"]
    except (OSError, ValueError, KeyError, EOFError):
        return recorded  # none yet, or unreadable: check everything and write it anew
    if paths == table.paths:  # the same annotation file as last time: compare row by row
        return stats.copy()
    row_of = {p: i for i, p in enumerate(paths)}  # the file changed: match the images by path
    for i, p in enumerate(table.paths):
        j = row_of.get(p)
        if j is not None:
            recorded[i] = stats[j]
    return recorded


def save_passed(path: Path | None, table: LabelTable, stats: np.ndarray) -> None:
    """Record ``stats`` (NOT_SEEN rows for the images that did not pass)."""
    if path is None:
        return

    def write(temp: str) -> None:
        with open(temp, "wb") as out:  # a file object: numpy would add .npz to a name
            np.savez(out, buffer=np.frombuffer(table.paths.buffer, dtype=np.uint8),
                     offsets=table.paths.offsets, stats=stats)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError:
        pass  # a read-only home: the check still ran, the next start checks again
