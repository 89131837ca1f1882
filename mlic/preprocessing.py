"""What an image must go through before a model sees it: size, normalisation, interpolation.

Its own module, below both: the data transforms apply it, a model states it (from its timm
backbone), checkpoints and exported files carry it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preprocessing:
    """What an image must go through before the model sees it."""
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]),
                   d.get("interpolation", "bilinear"))
