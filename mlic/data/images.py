"""Decoding one image file into RGB, the same way for training, evaluation and prediction.

EXIF orientation is applied, palette / grayscale / CMYK / 16-bit images become RGB, and
transparent images are composited on white (not on black, which would leak into colour statistics
and give drawing styles away). Failures become a ``DataError`` naming the file.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from mlic.errors import DataError


def load_rgb(path: str | Path, draft: int | None = None) -> Image.Image:
    """The image at ``path`` in RGB. ``draft``: JPEGs may be decoded at reduced scale (about this
    many pixels a side or more), which still reads every byte of the file: the fast check."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if draft is not None and image.format == "JPEG":
                image.draft("RGB", (draft, draft))
            image = ImageOps.exif_transpose(image)
            image.load()
    except FileNotFoundError:
        raise DataError("image file not found", path) from None
    except UnidentifiedImageError:
        raise DataError("not an image file PIL can read", path) from None
    except Image.DecompressionBombError as e:
        raise DataError(f"refused: too many pixels ({e})", path) from None
    except PermissionError:
        raise DataError("no permission to read the file", path) from None
    except IsADirectoryError:
        raise DataError("a folder, not an image file", path) from None
    except Exception as e:  # noqa: BLE001  truncated or corrupt data, broken EXIF: any decoder error
        raise DataError(f"corrupt or truncated image ({type(e).__name__}: {e})", path) from None
    try:
        return to_rgb(image)
    except (ValueError, OSError) as e:
        raise DataError(f"cannot convert its {image.mode} pixels to RGB ({e})", path) from None


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "F":  # float images: [0, 1] is the usual convention, else clipped to 0-255
        scale = 255.0 if (image.getextrema()[1] or 0) <= 1.0 else 1.0
        image = image.point(lambda v: v * scale).convert("L")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit data to 8 bits; 32-bit "I" images holding 8-bit values are left as they are.
        divisor = 256 if image.mode != "I" or (image.getextrema()[1] or 0) > 255 else 1
        image = image.point(lambda v: v / divisor).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
