"""What a /predict request carries, checked: the uploaded image and the options, or a 4xx naming the problem."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

from PIL import Image, ImageOps, UnidentifiedImageError
from ..errors import quote


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line message for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def decode_image(data: bytes, file_name: str, max_pixels: int) -> Image.Image:
    """Upload bytes -> RGB image (EXIF orientation applied), or RequestError.

    Decompression bombs (a small file declaring a huge image) are refused from the header, before any
    pixel is decoded, at the server's limit or Pillow's (``Image.MAX_IMAGE_PIXELS``), whichever is lower:
    Pillow alone only warns between its limit and twice it.
    """
    if not data:
        raise RequestError(400, f"'{file_name}' is empty (0 bytes)")
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as im:
            # The header gives the size before anything is decoded: refuse pixel bombs up front.
            w, h = im.size
            if w * h > limit:
                raise RequestError(413, f"'{file_name}' is {w}x{h} = {w * h / 1e6:.1f} megapixels; "
                                        f"this server accepts at most {limit / 1e6:.1f}")
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(415, f"'{file_name}' is not an image (JPEG, PNG, BMP, WebP, TIFF... expected)") from None
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"'{file_name}': {e}") from None
    except Exception as e:  # PIL raises many types for damaged files (OSError, SyntaxError, ValueError...)
        raise RequestError(415, f"'{file_name}' cannot be decoded as an image ({type(e).__name__}: {e})") from None


def _number(values: Mapping[str, str], key: str, low: float, high: float, high_open: bool = False) -> float | None:
    if key not in values:
        return None
    text = values[key]
    bound = f"[{low:g}, {high:g}{')' if high_open else ']'}"
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (low <= x <= high) or (high_open and x == high):
        raise RequestError(422, f"{key} must be a number in {bound}, got {quote(text)}")
    return x


def parse_options(values: Mapping[str, str], default_threshold: float) -> dict:
    """threshold (always), tile and overlap (only when the client gives them) for ``Detector.predict``."""
    threshold = _number(values, "threshold", 0.0, 1.0)
    options = {"threshold": default_threshold if threshold is None else threshold}
    if "tile" in values:
        text = values["tile"]
        if not text.strip().isdigit() or int(text) < 1:
            raise RequestError(422, f"tile must be a positive integer (tile side in pixels), got {quote(text)}")
        options["tile"] = int(text)
    overlap = _number(values, "overlap", 0.0, 1.0, high_open=True)
    if overlap is not None:
        if "tile" not in options:
            raise RequestError(422, "overlap applies to tiled inference: give tile too")
        options["overlap"] = overlap
    return options
