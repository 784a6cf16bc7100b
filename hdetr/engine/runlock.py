"""One training process per run folder: an advisory lock on ``RUN/.hdetr.lock``.

Two ``hdetr train`` processes writing one folder would interleave logs and checkpoints and both report
success. The lock is ``flock``-based, so the operating system drops it when its holder dies (no stale
lock file to delete by hand after a crash).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import UserError
from ..run_folder import LOCK

_HELD: dict[str, "RunLock"] = {}  # the locks this process holds, by lock file


class RunLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A Trainer of this process that stopped on an exception may not have released its lock; the lock
        # guards against other processes.
        stale = _HELD.pop(str(self.path.resolve()), None)
        if stale is not None:
            stale.release()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.path.parent} is in use by another training (process {holder}); wait for it "
                            "to finish or choose another --out folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        _HELD[str(self.path.resolve())] = self
        return self

    def release(self) -> None:
        if _HELD.get(str(self.path.resolve())) is self:
            del _HELD[str(self.path.resolve())]
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
