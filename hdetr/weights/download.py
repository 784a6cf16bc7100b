"""Downloading one large file over HTTP(S): a progress bar, resume of an interrupted transfer (HTTP Range),
and the finished file placed atomically (nobody ever reads half a file under its final name)."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import UserError

CHUNK = 1 << 20
PART_SUFFIX = ".part"
# Connections dropped mid-transfer are resumed this many times in one call before giving up.
RESUMES = 3


class DownloadError(UserError):
    pass


class OfflineError(DownloadError):
    """The server could not be reached at all (no network, DNS, refused connection)."""


def part_file(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "hdetr"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_size(resp, start: int) -> int | None:
    """The whole file's size: from Content-Range for a partial answer, else Content-Length."""
    if resp.status == 206:
        content_range = resp.headers.get("Content-Range", "")  # bytes START-END/TOTAL
        try:
            first = int(content_range.split()[1].split("-")[0])
            total = content_range.rsplit("/", 1)[1]
        except (IndexError, ValueError):
            raise DownloadError(f"{resp.url}: the server answered a range request without a valid Content-Range "
                                f"({content_range!r})") from None
        if first != start:
            raise DownloadError(f"{resp.url}: asked for bytes from {start}, the server sent them from {first}")
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _transfer(url: str, part: Path, timeout: float, progress: bool | None, label: str,
              on_answer=None) -> tuple[int, int | None]:
    """One request, appended to ``part`` (resumed when it holds bytes): (bytes now in part, total size).
    ``on_answer(start, total)`` is called once the server has answered."""
    from tqdm import tqdm

    start = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, start, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing left from there: complete already, or not a prefix of the file
            if (e.headers.get("Content-Range") or "").strip() == f"bytes */{start}":
                return start, start  # finished by an earlier call that stopped before the rename
            part.unlink()
            return _transfer(url, part, timeout, progress, label, on_answer)
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise OfflineError(f"{url}: cannot reach the server ({reason})") from None
    with resp:
        if resp.status != 206:
            start = 0  # the server ignored the range: the whole file comes again
        total = _total_size(resp, start)
        if on_answer is not None:
            on_answer(start, total)
        with open(part, "ab" if start else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                disable=(not progress) if progress is not None else None, file=sys.stderr, leave=False) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (http.client.IncompleteRead, socket.timeout, ConnectionError):
                    break  # the transfer broke off: the caller sees the short file and resumes
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    return part.stat().st_size, total


def download(url: str, dest: str | os.PathLike, progress: bool | None = None, timeout: float = 60.0,
             on_answer=None) -> Path:
    """``url`` -> ``dest``, through ``dest.part``; a transfer that breaks off resumes where it stopped.

    A ``.part`` left by an earlier call is continued, not restarted. The file appears under ``dest`` only
    once complete (its size as the server announced it). Raises ``OfflineError`` when the server cannot
    be reached, ``DownloadError`` for an HTTP error or a transfer that keeps breaking off (the ``.part``
    is kept for the next call). ``on_answer(start, total)``: called when the first request is answered
    (e.g. to say what is being downloaded only once the server is there).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_file(dest)
    for attempt in range(RESUMES + 1):
        size, total = _transfer(url, part, timeout, progress, dest.name, on_answer if attempt == 0 else None)
        if total is None or size == total:
            break
        if size > total:
            part.unlink()
            raise DownloadError(f"{url}: received {size} bytes, more than the {total} announced; run again to "
                                "download it anew")
        if attempt < RESUMES:
            print(f"{dest.name}: the transfer broke off at {size} of {total} bytes; resuming", file=sys.stderr)
    else:
        raise DownloadError(f"{url}: the transfer broke off at {size} of {total} bytes {RESUMES + 1} times; "
                            f"run again to resume from {part}")
    os.replace(part, dest)
    return dest
