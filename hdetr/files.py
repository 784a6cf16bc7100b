"""Writing a file atomically, and finding what an interrupted write left behind.

Torch-free and at the bottom of the layers, so any module (run logs, reports, commands that must
answer ``--help`` without torch) can write its outputs this way.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

TMP_SUFFIX = ".tmp"
# Free space under which a failed write is taken for a full disk (the writer's own error may not say so).
FULL_DISK_BYTES = 1 << 20


def temp_files(path: Path) -> list[Path]:
    """Temporary files ``atomic_write`` left behind for ``path`` (a process killed mid-write)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(folder: Path, error: Exception) -> bool:
    text = str(error)
    if "No space left on device" in text or "os error 28" in text:
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False
def _create_temp(path: Path) -> str:
    """Create ``.<name>.<random>.tmp`` beside ``path``, exclusively, with mode 0666 less the umask.

    Not ``tempfile.mkstemp``: its files are 0600, and the rename would hand that mode to ``path``, so
    another user (or a container running as another uid) could not read what hdetr wrote.
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return str(tmp)


def atomic_write(path: Path, write, previous: Path | None = None) -> None:
    """Write via a temporary file in the same folder, fsync, then rename: readers never see half a file.

    The temporary file is ``.<name>.<random>.tmp`` next to ``path`` (``temp_files``); a process killed
    before the rename leaves it behind and ``path`` untouched. ``previous``: the file ``path`` held is
    first renamed to it, so the last two complete versions exist at every moment (one of them under
    ``previous`` only for the instant between the two renames).

    A full disk is an ``OSError(ENOSPC)`` naming ``path``, whatever the writer raised: torch.save,
    safetensors, onnx and PIL report it each in their own way (torch.save: "unexpected pos ...").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    mode = os.stat(tmp).st_mode & 0o777  # 0666 less the umask
    try:
        try:
            write(tmp)
        except OSError as e:
            if e.filename is None:  # e.g. PIL's "[Errno 28] No space left on device": name the file
                raise OSError(e.errno, e.strerror or str(e), str(path)) from e
            raise
        except Exception as e:
            if _disk_full(path.parent, e):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
            raise
        # Writers that replace the file themselves (safetensors' save_file does) leave their own mode.
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
