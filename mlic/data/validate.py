"""Checking every image of a split before training, and what to do with the bad ones.

``data.check_images``: ``decode`` (default) reads every file completely (JPEGs at reduced scale,
which still reads every byte), ``exists`` only looks for the files, ``none`` skips the check.
Decoding runs in threads: Pillow releases the GIL while it decodes.

``data.on_bad_image``: ``error`` (default) stops with the list of every bad file and why, before
any training; ``skip`` trains on the rest and says how many were left out.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

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
                    threads: int | None = None, max_pixels: int | None = MAX_PIXELS
                    ) -> list[tuple[int, str]]:
    """(row, "path: reason") for every image of ``table`` that fails the check ``how``."""
    if how not in CHECKS:
        raise DataError(f"unknown image check {how!r}; one of {', '.join(CHECKS)}")
    if how == "none" or len(table) == 0:
        return []
    paths = [table.image_path(i) for i in range(len(table))]
    threads = threads or min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(check_one, paths, [how] * len(paths), [max_pixels] * len(paths),
                           chunksize=64)
        results = tqdm(results, total=len(paths), desc=f"checking images ({how})", leave=False,
                       disable=not progress or how == "exists", mininterval=1.0)
        return [(i, problem) for i, problem in enumerate(results) if problem is not None]


def validate_images(table: LabelTable, how: str = "decode", on_bad: str = "error",
                    progress: bool = True, report: Path | None = None, hint: str = "",
                    max_pixels: int | None = MAX_PIXELS) -> tuple[LabelTable, list[str]]:
    """Check ``table``'s images; returns (the usable table, the problems found).

    ``on_bad="error"``: any problem raises one DataError listing them (all of them in ``report``,
    a text file, when given; ``hint`` ends its first line). ``on_bad="skip"``: the table without
    the bad rows. ``max_pixels``: larger images are refused (``data.max_image_pixels``).
    """
    if on_bad not in ON_BAD:
        raise DataError(f"unknown on_bad_image {on_bad!r}; one of {', '.join(ON_BAD)}")
    bad = find_bad_images(table, how, progress, max_pixels=max_pixels)
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
