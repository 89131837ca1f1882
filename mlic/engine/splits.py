"""A run's data: its splits read from the config and aligned to one label order, their images
checked, and the loaders over them."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from mlic.data.dataset import MultiLabelDataset
from mlic.data.formats import load_table
from mlic.data.formats.csv_table import read_class_list, save_csv
from mlic.data.image_check_cache import default_cache_dir
from mlic.data.images import MAX_PIXELS
from mlic.data.table import LabelTable
from mlic.data.validate import validate_images
from mlic.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclass
class Splits:
    label_names: list[str]
    train: LabelTable
    val: LabelTable | None = None
    test: LabelTable | None = None
    notes: list[str] = field(default_factory=list)
    held_out: bool = False  # val was carved out of the training split (data.val_fraction)


def read_classes(classes: Any) -> list[str] | None:
    """data.classes: a list of names or a file of them; a problem names that file, not train.csv."""
    return None if classes is None else read_class_list(classes)


def load_splits(data: Mapping[str, Any], seed: int = 0) -> Splits:
    """Read the splits and align them all to one label order (the training split's by default)."""
    if data.get("train") is None:
        raise ConfigError("data.train is not set: give the training annotations, e.g. "
                          "data.train=path/to/train.csv")
    train = load_table(data["train"])
    names = read_classes(data.get("classes")) or train.label_names
    splits = Splits(names, train.with_labels(names, "negative"))
    splits.notes += [f"train: {note}" for note in train.extra.get("notes", [])]
    if data.get("hide_fraction"):
        splits.train, hidden = splits.train.hide(float(data["hide_fraction"]), seed)
        splits.notes.append(f"data.hide_fraction: {hidden} training labels hidden (set to unknown)")
    unlabelled = int((splits.train.positives.per_row() == 0).sum())
    if unlabelled:
        splits.notes.append(f"{unlabelled} of {len(splits.train)} training images have no positive "
                            f"label (kept: they are negatives for every label they do not mark "
                            f"unknown)")
    missing = sorted(set(names) - set(train.label_names))
    if missing:
        splits.notes.append(f"{len(missing)} labels of data.classes never occur in the training split")
    for key in ("val", "test"):
        if data.get(key) is None:
            continue
        table = load_table(data[key])
        splits.notes += [f"{key}: {note}" for note in table.extra.get("notes", [])]
        extra = sorted(set(table.label_names) - set(names))
        if extra:
            splits.notes.append(f"{key}: {len(extra)} labels not among the training labels are "
                                f"ignored: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        aligned = table.with_labels(names, "negative")
        if len(aligned) and not aligned.positives.nnz:  # its mAP would be nan
            raise DataError(f"data.{key}: none of its {len(table)} images has a label among the "
                            f"{len(names)} training labels (its labels: "
                            f"{', '.join(table.label_names[:8]) or 'none'}), so it cannot measure "
                            f"the model", table.source)
        setattr(splits, key, aligned)
    return splits


def hold_out_validation(splits: Splits, data: Mapping[str, Any], seed: int) -> str | None:
    """Without data.val, hold ``data.val_fraction`` of the training images out as the validation
    split (after the image check, so its counts are the file's); returns the note to log."""
    if splits.val is not None or data.get("val") is not None or not data.get("val_fraction"):
        return None
    total = len(splits.train)
    splits.train, splits.val = hold_out(splits.train, float(data["val_fraction"]), seed)
    splits.held_out = splits.val is not None
    if splits.val is None:
        return f"no data.val, and {total} training images are too few to hold any out"
    return (f"no data.val: {len(splits.val)} of the {total} training images, drawn with seed "
            f"{seed}, are the validation split (data.val_fraction={data['val_fraction']})")


def hold_out(table: LabelTable, fraction: float, seed: int) -> tuple[LabelTable, LabelTable | None]:
    """(the rest, the held-out share): ``fraction`` of the images drawn at random with ``seed``, the
    same on every resume. None when that is no image, or would leave fewer than 2 to train on."""
    count = int(round(fraction * len(table)))
    if count < 1 or len(table) - count < 2:
        return table, None
    order = np.random.default_rng(seed).permutation(len(table))
    held = np.sort(order[:count])
    rest = np.sort(order[count:])
    return table.subset(rest), table.subset(held)


def write_held_out(table: LabelTable, path: Path, labels_path: Path) -> None:
    """The held-out validation split as a plain CSV with absolute image paths, and its labels."""
    save_csv(table, path, classes_path=labels_path, absolute_paths=True)


def check_split_images(splits: Splits, data: Mapping[str, Any], log: logging.Logger,
                       report: Path | None, progress: bool) -> int:
    """Check every split's images (data.check_images); under data.on_bad_image=skip, drop the
    bad ones from the splits (listed in ``report``). Returns the number of training images left out."""
    hint = "; fix or remove them, or set data.on_bad_image=skip to train on the rest"
    left_out = 0
    for key in SPLITS:
        table = getattr(splits, key)
        if table is None:
            continue
        log.info(f"{key}: {table.summary()}  [{table.source}]")
        usable, problems = validate_images(table, data["check_images"], data["on_bad_image"],
                                           progress, report, hint,
                                           data.get("max_image_pixels", MAX_PIXELS),
                                           cache_dir=default_cache_dir())
        if problems:
            log.info(f"{key}: skipped {len(problems)} of {len(table)} images that cannot be used "
                     f"(data.on_bad_image=skip; listed in {report}), e.g. {problems[0]}")
            setattr(splits, key, usable)
            left_out += len(problems) if key == "train" else 0
    if len(splits.train) < 2:  # one image: batch norm cannot train on batches of one
        raise DataError(f"data.train: {len(splits.train)} usable image(s); training needs at least "
                        f"2", splits.train.source)
    return left_out


def make_loader(table: LabelTable, transform, batch_size: int, workers: int, shuffle: bool,
                drop_last: bool = False, seed: int = 0, sampler=None, on_bad: str = "error",
                failure_log: Path | None = None, max_pixels: int | None = MAX_PIXELS) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    dataset = MultiLabelDataset(table, transform, on_bad, failure_log, max_pixels)
    return DataLoader(dataset, batch_size=batch_size,
                      shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, drop_last=drop_last, generator=generator,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())
