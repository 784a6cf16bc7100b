"""Outputs never destroy inputs: the checks every verb runs on its output paths before writing.

hdetr writes only new files or files it wrote itself; an output path that is an input, holds inputs
under the names it would write, or is a file of someone else's is refused with a message saying
what to do instead.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .errors import UserError


def check_writable(out: Path, flag: str = "--out", folder: bool = True) -> None:
    """Refuse, before any work, an output that cannot be written: a read-only folder or file system, or
    one without write permission. Tried for real (a file created and removed in the folder that will
    hold the output, or in its nearest existing parent), since permission bits do not tell: root ignores
    them, a read-only mount refuses root too. ``folder``: ``out`` is a folder (else a file in one)."""
    target = Path(out) if folder else Path(out).parent
    where = next((p for p in (target, *target.parents) if p.exists()), None)
    if where is None or not where.is_dir():
        return  # not a folder: the verbs' own checks say so
    try:
        fd, probe = tempfile.mkstemp(prefix=".hdetr-write-check-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = {errno.EROFS: "the file system is read-only", errno.EACCES: "no permission to write there",
               errno.EPERM: "no permission to write there", errno.ENOSPC: "the disk is full"}.get(e.errno, e.strerror or str(e))
        raise UserError(f"{flag} {out}: cannot write in {where} ({why}); choose another output") from None




def refuse_input_path(out: Path, inputs: Iterable[Path], flag: str = "--out") -> None:
    """``out`` must not be, or lie inside, any of ``inputs`` (files or folders)."""
    target = out.resolve()
    for p in inputs:
        r = Path(p).resolve()
        if target == r or r in target.parents:
            raise UserError(f"{flag} {out} is {'inside ' if target != r else ''}the input {p}; choose another path")


def check_output_file(path: Path, flag: str, ours: Callable[[Path], bool]) -> None:
    """A file hdetr is about to write: not a folder, and if it exists, one hdetr wrote (``ours``)."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    if path.exists() or path.is_symlink():
        try:
            mine = path.is_file() and ours(path)
        except Exception:  # noqa: BLE001 - anything unreadable as our output is not ours
            mine = False
        if not mine:
            raise UserError(f"{flag} {path} exists and was not written by hdetr; choose another name or delete it")


def json_with(*keys: str) -> Callable[[Path], bool]:
    """``ours`` for JSON outputs: an object holding ``keys``, or (no keys) a list of detections."""
    def check(path: Path) -> bool:
        data = json.loads(path.read_text())
        if not keys:
            return isinstance(data, list) and all(isinstance(d, dict) and "score" in d for d in data)
        return isinstance(data, dict) and all(k in data for k in keys)
    return check


def jsonl_with(*keys: str) -> Callable[[Path], bool]:
    """``ours`` for JSON-lines outputs: the first line is an object holding ``keys``."""
    def check(path: Path) -> bool:
        with open(path) as f:
            first = json.loads(f.readline())
        return isinstance(first, dict) and all(k in first for k in keys)
    return check


def vouched_by(index: Path, ours: Callable[[Path], bool]) -> Callable[[Path], bool]:
    """``ours`` for a file that cannot tell who wrote it (a picture, a video): ours when ``index``, the
    file hdetr writes beside it and that can tell (checked with ``ours``), is hdetr's."""
    def check(path: Path) -> bool:
        return index.is_file() and ours(index)
    return check
