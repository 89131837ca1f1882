"""A torch Dataset over a LabelTable: decoded, transformed images and their {1, 0, -1} targets."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from mlic.data.images import load_rgb
from mlic.data.table import LabelTable
from mlic.errors import DataError


class MultiLabelDataset(Dataset):
    def __init__(self, table: LabelTable, transform: Callable):
        self.table = table
        self.transform = transform
        self.targets = torch.from_numpy(table.targets.astype("float32"))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_rgb(self.table.image_path(index))
        return self.transform(image), self.targets[index]


def check_images(table: LabelTable, how: str = "exists", progress: bool = True) -> None:
    """Find every image that cannot be used before any work starts, and list them all at once."""
    if how == "none":
        return
    problems = []
    items = range(len(table))
    for i in tqdm(items, desc=f"checking images ({how})", disable=not progress or how == "exists",
                  leave=False):
        path = table.image_path(i)
        if how == "exists":
            if not path.is_file():
                problems.append(f"  {path}: image file not found")
        else:
            try:
                load_rgb(path)
            except DataError as e:
                problems.append(f"  {e}")
    if problems:
        shown = "\n".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} of {len(table)} images cannot be used "
                        f"(annotations: {table.source or 'table'}):\n{shown}{more}")
