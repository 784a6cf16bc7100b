"""Rules shared by the dataset checker and the dataset itself.

``hdetr check-data`` (``hdetr.data.validate``) and ``CocoDetection`` both go through these functions, so
the repairs the report counts are exactly the ones training applies, and an image path refused by one is
refused by the other.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..errors import DataError, quote

# Outcomes of sanitize_box. "ok" and "clipped" keep the box; the others drop it.
BOX_OK = "ok"
BOX_CLIPPED = "clipped"  # partly outside the image: clipped to it
BOX_DEGENERATE = "degenerate"  # width or height <= 0: dropped
BOX_OUTSIDE = "outside"  # no overlap with the image: dropped
BOX_NONFINITE = "nonfinite"  # NaN or infinite coordinate: dropped
BOX_MALFORMED = "malformed"  # not a list of 4 numbers: a schema error, never repaired
BOX_KEPT = (BOX_OK, BOX_CLIPPED)


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file, or None. Opening a FIFO or a device would block or never end;
    the checker and training both refuse them with this message."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    what = "a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file"
    return f"{what}, not an image or annotation file"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sanitize_box(bbox: Any, width: float | None, height: float | None) -> tuple[str, list[float] | None]:
    """COCO ``[x, y, w, h]`` -> ``(outcome, [x0, y0, x1, y1] or None)``.

    The order of the rules is part of the contract (it decides which count a box lands in):
    malformed, non-finite, degenerate (w or h <= 0), then, when the image size is known, outside (no
    overlap left after clipping) or clipped (some coordinate moved). Without an image size the box is
    returned unclipped.
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return BOX_MALFORMED, None
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or not (math.isfinite(x + w) and math.isfinite(y + h)):
        return BOX_NONFINITE, None
    if w <= 0 or h <= 0:
        return BOX_DEGENERATE, None
    box = [x, y, x + w, y + h]
    if width is None or height is None:
        return BOX_OK, box
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return BOX_OUTSIDE, None
    clipped = [x0, y0, x1, y1]
    return (BOX_OK if clipped == box else BOX_CLIPPED), clipped


def image_relpath(info: dict) -> str:
    """Where an image entry says its file is, relative to the images folder.

    ``file_name`` when present; LVIS omits it and addresses COCO's images as ``.../<split>2017/<file>``
    through ``coco_url``.
    """
    name = info.get("file_name")
    if name:
        if not isinstance(name, str):
            raise DataError(f"image {info.get('id')}: 'file_name' must be a string, got {quote(name)}")
        return name
    url = info.get("coco_url")
    if url and isinstance(url, str):
        split_dir, fname = url.rstrip("/").split("/")[-2:]
        return f"{split_dir}/{fname}"
    raise DataError(f"image {info.get('id')} has neither 'file_name' nor 'coco_url'")


def confine_path(root: str | os.PathLike, relpath: str) -> Path:
    """``root / relpath`` with symlinks followed, refused when the *name* leaves ``root``.

    The file name comes from an annotation file, so it must not make hdetr read arbitrary files: ``..``
    that climbs out of ``root`` and absolute paths are refused. Symlinks placed inside the dataset folder
    are the owner's choice (image farms, shared storage) and are followed wherever they point; a
    symlink loop is refused. A missing file is returned as is (the caller reports it as missing).
    """
    if "\x00" in relpath:
        raise DataError(f"file name {quote(relpath)} contains a NUL byte")
    root = Path(root)
    lexical = os.path.normpath(relpath)
    if os.path.isabs(relpath) or lexical == ".." or lexical.startswith(".." + os.sep):
        raise DataError(
            f"file name {quote(relpath)} escapes the images folder {root} (no '..' climbing out of it and no "
            "absolute paths; a symlink inside the folder may point elsewhere)"
        )
    candidate = root / lexical
    try:
        return candidate.resolve(strict=True)
    except FileNotFoundError:
        return candidate.absolute()
    except (OSError, RuntimeError) as e:  # ELOOP (symlink loop), or RuntimeError before Python 3.13
        raise DataError(f"{candidate}: cannot resolve the path ({e})") from None
