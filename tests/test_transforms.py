"""Training transforms: the reference RandAugment runs at every level of every op (timm's own
uniform-magnitude string crashes in Posterize on Pillow 13), and its magnitudes vary."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from mlic.data.transforms import REFERENCE_RANDAUGMENT_OPS, randaugment, train_transform
from mlic.errors import ConfigError
from mlic.models.backbone import Preprocessing


def random_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(37, 29), (64, 64), (20, 48)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in (sizes[i % len(sizes)] for i in range(count))]


def test_reference_randaugment_runs_every_op_at_every_level():
    transform = randaugment("reference")
    assert tuple(op.name for op in transform.ops) == REFERENCE_RANDAUGMENT_OPS
    assert transform.num_layers == 2 and all(op.prob == 0.5 for op in transform.ops)
    for image in random_images(3):
        for op in transform.ops:
            for level in np.linspace(0.0, 10.0, 41):
                args = op.level_fn(level, op.hparams) if op.level_fn is not None else ()
                if op.name == "PosterizeOriginal":
                    assert 4 <= args[0] <= 8  # bits kept: the reference's range, never 0
                out = op.aug_fn(image, *args, **op.kwargs)
                assert out.size == image.size and out.mode == "RGB", (op.name, level)


def test_reference_randaugment_draws_uniform_magnitudes():
    transform = randaugment("reference")
    levels: list[float] = []
    applied = []

    def recording(op):
        level_fn, aug_fn = op.level_fn, op.aug_fn
        if level_fn is not None:
            op.level_fn = lambda level, hparams: levels.append(level) or level_fn(level, hparams)
        op.aug_fn = lambda *args, **kwargs: applied.append(op.name) or aug_fn(*args, **kwargs)

    for op in transform.ops:
        recording(op)
    random.seed(0)
    np.random.seed(0)
    image = random_images(1)[0]
    calls = 800
    for _ in range(calls):
        assert transform(image).size == image.size
    # Each call picks 2 ops, each applied with p 0.5.
    assert 0.45 < len(applied) / (2 * calls) < 0.55
    assert len(set(applied)) == len(REFERENCE_RANDAUGMENT_OPS)
    levels = np.array(levels)
    assert levels.min() >= 0 and levels.max() <= 10
    assert levels.min() < 0.5 and levels.max() > 9.5 and len(np.unique(levels)) == len(levels)
    assert abs(levels.mean() - 5) < 0.5  # uniform in [0, 10]
    assert abs(np.mean(levels < 5) - 0.5) < 0.06


def test_train_transform_with_the_reference_randaugment():
    pre = Preprocessing(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    transform = train_transform(pre, {"hflip": True, "randaugment": "reference", "cutout": 0.4,
                                      "cutout_p": 0.5})
    random.seed(1)
    np.random.seed(1)
    for image in random_images(12, seed=1):
        x = transform(image)
        assert x.shape == (3, 32, 32) and bool(torch.isfinite(x).all())


def test_randaugment_strings():
    assert len(randaugment("rand-m9-n2-mstd0.5").ops) == 15  # timm's own set, as before
    with pytest.raises(ConfigError, match="data.augment.randaugment: 'rand-m9-q3'.*reference"):
        randaugment("rand-m9-q3")
    with pytest.raises(ConfigError, match="'refrence'"):
        randaugment("refrence")
