"""Reading an image file as the model sees it: EXIF orientation applied, 16-bit and float images
brought to 8 bits, every mode converted to RGB."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from .sanitize import not_a_regular_file


# EXIF orientations that turn the stored image by 90 degrees (width and height swap on display).
EXIF_ORIENTATION_TAG = 0x0112


EXIF_SWAPS_SIZE = (5, 6, 7, 8)


_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _high_bit_depth_to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer / float grayscale -> 8-bit 'L', scaled rather than clipped.

    PIL's own ``convert('RGB')`` clips such images at 255, which turns most 16-bit images white. Rules:
    ``I;16*``: value / 257 (0..65535 -> 0..255); ``I``: kept as is when already within 0..255, else
    clipped to 0..65535 and divided by 257; ``F``: x 255 when within 0..1, else min-max stretched.
    """
    a = np.asarray(im)
    if im.mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        else:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    else:
        a = a.astype(np.float64)
        if not (im.mode == "I" and a.size and a.min() >= 0 and a.max() <= 255):
            a = np.clip(a, 0, 65535) / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (alpha dropped, palettes expanded, high bit depths scaled)."""
    if im.mode in _HIGH_BIT_DEPTH_MODES:
        im = _high_bit_depth_to_8bit(im)
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return im if im.mode == "RGB" else im.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode fully (a truncated file fails here, not later), apply the EXIF orientation, convert to RGB."""
    not_regular = not_a_regular_file(path)
    if not_regular:
        raise (FileNotFoundError if not_regular == "file not found" else OSError)(not_regular)
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)
