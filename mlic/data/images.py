"""Decoding one image file into RGB, the same way for training, evaluation and prediction.

EXIF orientation is applied, palette / grayscale / CMYK / 16-bit images become RGB, and
transparent images are composited on white (not on black, which would leak into colour statistics
and give drawing styles away). Failures become a ``DataError`` naming the file.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from mlic.errors import DataError


def load_rgb(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except FileNotFoundError:
        raise DataError("image file not found", path) from None
    except UnidentifiedImageError:
        raise DataError("not an image file PIL can read", path) from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise DataError(f"corrupt or truncated image ({e})", path) from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
