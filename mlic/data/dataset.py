"""A torch Dataset over a LabelTable: decoded, transformed images and their {1, 0, -1} targets."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from mlic.data.images import MAX_PIXELS, load_rgb
from mlic.data.table import LabelTable
from mlic.data.validate import validate_images
from mlic.errors import DataError

MAX_REPLACEMENTS = 16  # this many unreadable images in a row: the data is gone, not one bad file


class MultiLabelDataset(Dataset):
    """``on_bad="skip"``: an image that cannot be read (e.g. deleted after the up-front check) is
    replaced by the next readable one of the split, so batches keep their size and the schedule its
    length; each replacement is appended to ``failure_log`` (one line, safe from worker processes).
    ``max_pixels``: larger images are refused from their header (``data.max_image_pixels``)."""

    def __init__(self, table: LabelTable, transform: Callable, on_bad: str = "error",
                 failure_log: Path | None = None, max_pixels: int | None = MAX_PIXELS):
        self.table = table
        self.max_pixels = max_pixels
        self.transform = transform
        # No float copy of the table: each item's dense row is built when it is read.
        self.on_bad, self.failure_log = on_bad, failure_log

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.on_bad != "skip":
            image = load_rgb(self.table.image_path(index), max_pixels=self.max_pixels)
            return self.transform(image), self.target(index)
        for attempt in range(MAX_REPLACEMENTS):
            row = (index + attempt) % len(self.table)
            try:
                image = load_rgb(self.table.image_path(row), max_pixels=self.max_pixels)
            except DataError as e:
                self._record(e)
                continue
            return self.transform(image), self.target(row)
        raise DataError(f"{MAX_REPLACEMENTS} images in a row cannot be read, from "
                        f"{self.table.image_path(index)} on: is the data still there?")

    def target(self, index: int) -> torch.Tensor:
        """The float32 {1, 0, -1} label states of one image."""
        return torch.from_numpy(self.table.rows([index])[0].astype("float32"))

    def _record(self, error: DataError) -> None:
        if self.failure_log is not None:
            # One short write in append mode: lines from several worker processes do not mix.
            with open(self.failure_log, "a", encoding="utf-8") as f:
                f.write(f"{self.table.source or 'table'}\t{error}\n")


def check_images(table: LabelTable, how: str = "exists", progress: bool = True) -> None:
    """Find every image that cannot be used before any work starts, and list them all at once."""
    validate_images(table, how, "error", progress)
