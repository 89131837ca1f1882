"""Checking every image of a split before training, and what to do with the bad ones.

``data.check_images``: ``decode`` (default) reads every file completely (JPEGs at reduced scale,
which still reads every byte), ``exists`` only looks for the files, ``none`` skips the check.
Decoding runs in threads: Pillow releases the GIL while it decodes.

Images that passed ``decode`` before, unchanged since (size, modification and change time), are
not decoded again at a resume or a later run (``mlic.data.image_check_cache`` says where that
record is kept).

``data.on_bad_image``: ``error`` (default) stops with the list of every bad file and why, before
any training; ``skip`` trains on the rest and says how many were left out.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlic.data.image_check_cache import NOT_SEEN, cache_file, load_passed, save_passed, stat_images
from mlic.data.images import MAX_PIXELS, load_rgb, regular_file
from mlic.data.table import LabelTable
from mlic.errors import DataError

CHECKS = ("decode", "exists", "none")
ON_BAD = ("error", "skip")
SHOWN = 20  # problems listed in the error message; all of them go to the report file
DRAFT = 64  # JPEGs decoded at >= 64 px a side: a fraction of the time of a full decode


def check_one(path: Path, how: str, max_pixels: int | None = MAX_PIXELS) -> str | None:
    """Why the image at ``path`` cannot be used, or None."""
    try:
        if how == "exists":
            regular_file(path)
        else:
            load_rgb(path, draft=DRAFT, max_pixels=max_pixels)
    except DataError as e:
        return str(e)
    return None


def find_bad_images(table: LabelTable, how: str = "decode", progress: bool = True,
                    threads: int | None = None, max_pixels: int | None = MAX_PIXELS,
                    cache_dir: Path | None = None) -> list[tuple[int, str]]:
    """(row, "path: reason") for every image of ``table`` that fails the check ``how``.

    ``cache_dir``: under ``decode``, images that passed before with the same size and times are
    not decoded again (``mlic.data.image_check_cache``); None decodes every image."""
    if how not in CHECKS:
        raise DataError(f"unknown image check {how!r}; one of {', '.join(CHECKS)}")
    if how == "none" or len(table) == 0:
        return []
    cache = cache_file(table, max_pixels, cache_dir) if how == "decode" and cache_dir else None
    stats = stat_images(table) if cache is not None else None
    rows = np.arange(len(table))
    if cache is not None:
        passed = (load_passed(cache, table) == stats).all(axis=1) & (stats[:, 0] != NOT_SEEN)
        rows = np.flatnonzero(~passed)
    paths = [table.image_path(i) for i in rows]
    threads = threads or min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(check_one, paths, [how] * len(paths), [max_pixels] * len(paths),
                           chunksize=64)
        results = tqdm(results, total=len(paths), desc=f"checking images ({how})", leave=False,
                       disable=not progress or how == "exists", mininterval=1.0)
        bad = [(int(i), problem) for i, problem in zip(rows, results) if problem is not None]
    if cache is not None and len(rows):  # nothing new checked: the record stands as it is
        stats[[i for i, _ in bad]] = NOT_SEEN
        save_passed(cache, table, stats)
    return bad


def validate_images(table: LabelTable, how: str = "decode", on_bad: str = "error",
                    progress: bool = True, report: Path | None = None, hint: str = "",
                    max_pixels: int | None = MAX_PIXELS, cache_dir: Path | None = None
                    ) -> tuple[LabelTable, list[str]]:
    """Check ``table``'s images; returns (the usable table, the problems found).

    ``on_bad="error"``: any problem raises one DataError listing them (all of them in ``report``,
    a text file, when given; ``hint`` ends its first line). ``on_bad="skip"``: the table without
    the bad rows. ``max_pixels``: larger images are refused (``data.max_image_pixels``).
    ``cache_dir``: where the images that passed are recorded (see ``find_bad_images``).
    """
    if on_bad not in ON_BAD:
        raise DataError(f"unknown on_bad_image {on_bad!r}; one of {', '.join(ON_BAD)}")
    bad = find_bad_images(table, how, progress, max_pixels=max_pixels, cache_dir=cache_dir)
    problems = [problem for _, problem in bad]
    if problems and report is not None:
        with open(report, "a", encoding="utf-8") as f:
            f.writelines(f"{table.source or 'table'}\t{p}\n" for p in problems)
    if not problems or on_bad == "skip":
        bad_rows = {i for i, _ in bad}
        if bad_rows and len(bad_rows) == len(table):
            raise DataError(f"none of the {len(table)} images can be used, e.g. {problems[0]}",
                            table.source or None)
        usable = table if not bad_rows else \
            table.subset(i for i in range(len(table)) if i not in bad_rows)
        return usable, problems
    shown = "\n".join(f"  {p}" for p in problems[:SHOWN])
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    listed = f" (all listed in {report})" if report is not None else ""
    raise DataError(f"{len(problems)} of {len(table)} images cannot be used "
                    f"(annotations: {table.source or 'table'}){listed}{hint}:\n{shown}{more}")
