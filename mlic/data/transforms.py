"""Image transforms for training and evaluation.

Evaluation resizes straight to a square (no crop, as the paper's recipe does: a crop can cut away
a labelled object) and normalises with the backbone's mean and std. Training adds what the config
asks for: a random shift, horizontal flip, timm's RandAugment, and Cutout.
"""
from __future__ import annotations

import random
from typing import Any, Mapping

import torch
from PIL import Image
from torchvision import transforms as T

from mlic.models.backbone import Preprocessing

_INTERPOLATION = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


class Cutout:
    """Paste one square of a random colour (side = fraction of the image side) with probability p.

    The square's centre is uniform over the image and it is clipped at the borders, so near an
    edge less than the full square is covered (as in the reference recipes).
    """

    def __init__(self, fraction: float = 0.4, p: float = 0.5):
        self.fraction, self.p = fraction, p

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.fraction <= 0 or random.random() >= self.p:
            return image
        width, height = image.size
        side_w, side_h = int(self.fraction * width), int(self.fraction * height)
        cx, cy = random.randint(0, width - 1), random.randint(0, height - 1)
        box = (max(cx - side_w // 2, 0), max(cy - side_h // 2, 0),
               min(cx + side_w // 2, width), min(cy + side_h // 2, height))
        colour = tuple(random.randint(0, 255) for _ in range(3))
        image = image.copy()
        image.paste(colour, box)
        return image


def eval_transform(pre: Preprocessing) -> T.Compose:
    return T.Compose([
        T.Resize((pre.image_size, pre.image_size), interpolation=_INTERPOLATION[pre.interpolation]),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def train_transform(pre: Preprocessing, augment: Mapping[str, Any]) -> T.Compose:
    size = pre.image_size
    steps: list[Any] = [T.Resize((size, size), interpolation=_INTERPOLATION[pre.interpolation])]
    if augment.get("shift"):
        shift = float(augment["shift"]) / size
        steps.append(T.RandomAffine(degrees=0, translate=(shift, shift), fill=255))
    if augment.get("randaugment"):
        from timm.data.auto_augment import rand_augment_transform
        steps.append(rand_augment_transform(augment["randaugment"], {"img_mean": (124, 116, 104)}))
    if augment.get("cutout"):
        steps.append(Cutout(float(augment["cutout"]), float(augment.get("cutout_p", 0.5))))
    if augment.get("hflip"):
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    return T.Compose(steps)


def batch_to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images
