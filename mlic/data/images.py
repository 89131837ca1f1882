"""Decoding one image file into RGB, the same way for training, evaluation and prediction.

EXIF orientation is applied, palette / grayscale / CMYK / 16-bit images become RGB, and
transparent images are composited on white (not on black, which would leak into colour statistics
and give drawing styles away). Failures become a ``DataError`` naming the file.

Two checks come before any pixel is decoded: the path must be a regular file (``stat``, so a named
pipe or a device is refused without being opened, which would block forever), and the image's
size from its header must be at most ``max_pixels`` (a small compressed file can decode to
gigabytes: a decompression bomb; ``data.max_image_pixels``).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from mlic.errors import DataError


MAX_PIXELS = 128_000_000  # data.max_image_pixels's default (mlic/config.py says why)


def regular_file(path: Path) -> None:
    """Raise a DataError unless ``path`` is a regular file; never opens it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError("image file not found", path) from None
    except PermissionError:
        raise DataError("no permission to read the file", path) from None
    except OSError as e:
        raise DataError(f"cannot look at the file ({e.strerror})", path) from None
    if stat.S_ISDIR(mode):
        raise DataError("a folder, not an image file", path)
    if not stat.S_ISREG(mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
            "a socket" if stat.S_ISSOCK(mode) else "a special file"
        raise DataError(f"{kind}, not a regular image file; refused without reading it", path)


def check_pixels(size: tuple[int, int], max_pixels: int | None, path: Path) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(
            f"refused: {width}x{height} is {width * height / 1e6:.0f} MP, above data.max_image_pixels "
            f"= {max_pixels / 1e6:g} MP (decoding it would take at least "
            f"{width * height * 4 / 1e9:.1f} GB: a guard against decompression bombs; raise "
            f"data.max_image_pixels if the image is real)", path)


def load_rgb(path: str | Path, draft: int | None = None,
             max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """The image at ``path`` in RGB. ``draft``: JPEGs may be decoded at reduced scale (about this
    many pixels a side or more), which still reads every byte of the file: the fast check.
    ``max_pixels``: larger images are refused from their header (None: Pillow's own limit only)."""
    path = Path(path)
    regular_file(path)
    try:
        with Image.open(path) as image:
            check_pixels(image.size, max_pixels, path)
            if draft is not None and image.format == "JPEG":
                image.draft("RGB", (draft, draft))
            image = ImageOps.exif_transpose(image)
            image.load()
    except FileNotFoundError:
        raise DataError("image file not found", path) from None
    except UnidentifiedImageError:
        raise DataError("not an image file PIL can read", path) from None
    except DataError:
        raise
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
