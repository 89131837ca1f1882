"""Image transforms for training and evaluation.

Evaluation resizes straight to a square (no crop, as the paper's recipe does: a crop can cut away
a labelled object) and normalises with the backbone's mean and std. Training adds what the config
asks for: a random shift, horizontal flip, RandAugment (through timm), and Cutout.

RandAugment (``data.augment.randaugment``): a timm string such as ``rand-m9-n2-mstd0.5`` (2 ops,
each with p 0.5, magnitude ~ N(9, 0.5) on timm's 0-10 scale), or ``reference``: the RandAugment of
the reference code (pip ``randaugment`` 1.0.2, used by the paper's code and by ASL), rebuilt
from timm's ops. The reference picks 2 of its ops, each applied with p 0.5 at a magnitude drawn
uniformly from its levels 1-9, level 9 being each op's maximum (rotate 30 degrees, shear 0.3,
translate 0.45, enhance factor 1 +- 0.9, solarize at 0, posterize to 4 bits): timm's level 10. So
``reference`` draws the magnitude uniformly in [0, 10] (timm's ``mstd`` over 100), with:

* Posterize as timm's ``PosterizeOriginal`` (keep 4-8 bits, the reference's range). timm's
  ``Posterize`` keeps int(0.4 m) bits, 0 below m = 2.5, which Pillow 13 refuses (ValueError), so
  ``rand-m9-n2-mstd101`` crashes in a worker; ``PosterizeIncreasing`` keeps 0 bits at m = 10.
* the ``*Increasing`` forms of the enhance ops (factor 1 +- 0.09 m, either way, as the reference)
  and of Solarize (threshold 256 - 25.6 m).
* no SolarizeAdd (not in the reference) and no Cutout op (the reference's is at most 20 px;
  mlic's Cutout, ``data.augment.cutout``, runs after RandAugment as in the paper's recipe).
"""
from __future__ import annotations

import random
from typing import Any, Mapping

import torch
from PIL import Image
from torchvision import transforms as T

from mlic.errors import ConfigError
from mlic.preprocessing import Preprocessing

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


# The reference RandAugment's ops in timm's names (see the module docstring).
REFERENCE_RANDAUGMENT_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeOriginal", "SolarizeIncreasing",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def randaugment(spec: str):
    """``reference`` or a timm string -> the transform; a bad string is a ConfigError naming the
    key, not timm's bare assertion."""
    from timm.data.auto_augment import rand_augment_transform

    hparams = {"img_mean": (124, 116, 104)}
    if spec == "reference":
        return rand_augment_transform("rand-m10-n2-p0.5-mstd101", hparams,
                                      transforms=list(REFERENCE_RANDAUGMENT_OPS))
    try:
        if spec.split("-")[0] != "rand":
            raise ValueError("no 'rand-' prefix")
        return rand_augment_transform(spec, hparams)
    except (AssertionError, ValueError) as e:  # timm asserts on an unknown section
        raise ConfigError(f"data.augment.randaugment: {spec!r} is neither 'reference' nor a timm "
                          f"rand-augment string such as 'rand-m9-n2-mstd0.5' ({e})") from None


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
        steps.append(randaugment(augment["randaugment"]))
    if augment.get("cutout"):
        steps.append(Cutout(float(augment["cutout"]), float(augment.get("cutout_p", 0.5))))
    if augment.get("hflip"):
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    return T.Compose(steps)


def batch_to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images
