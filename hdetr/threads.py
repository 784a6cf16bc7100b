"""``--threads N``: the intra-op threads of torch's CPU pool, for the commands that compute.

Parsing stays free of torch (``hdetr VERB --help`` answers at once); torch is imported only when the
count is applied, by the command's ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from .errors import quote


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {quote(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_threads_argument(p, default: int | None = None, extra: str = "") -> None:
    what = f"default {default}" if default is not None else "default: torch's own, usually one per core"
    p.add_argument("--threads", type=positive_int, default=default, metavar="N",
                   help=f"torch intra-op CPU threads ({what}){extra}; on a shared machine use the cores left free")


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (None leaves it as it is)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


def prefer_passive_waiting(threads: int | None = None) -> None:
    """On a busy machine, let torch's OpenMP threads sleep instead of spinning while they wait
    (``OMP_WAIT_POLICY=PASSIVE``); a policy the user set is kept.

    GNU OpenMP's default makes a thread that reaches a barrier spin before it sleeps. When other
    processes compete for the cores, the spinning threads take the CPU time their partners need; on an
    idle machine sleeping costs wall time instead (both measured in docs/performance.md, "Contention").
    So it is chosen only when
    the load average plus our threads exceed the cores. libgomp reads the variable once, when it
    loads: this must run before torch is imported.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    cores = os.cpu_count() or 1
    busy = busy_cores()
    if busy is None:  # nothing to measure it by on this platform
        return
    if busy + (threads or cores) > cores + 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def busy_cores(window: float = 0.2) -> float | None:
    """How many cores other processes keep busy now: the CPU time /proc/stat counts over ``window``
    seconds (Linux), else the 1-minute load average (None where neither exists).

    The load average lags by a minute: right after ``pip install`` or a finished job it still reports a
    busy machine, and the demo then ran on one thread, with sleeping OpenMP threads, at half its speed.
    """
    first = _cpu_times()
    if first is not None:
        time.sleep(window)
        second = _cpu_times()
        if second is not None:
            total = second[0] - first[0]
            idle = second[1] - first[1]
            if total > 0:
                return (os.cpu_count() or 1) * (total - idle) / total
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _cpu_times() -> tuple[int, int] | None:
    """(all, idle + iowait) clock ticks of the machine's CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(ticks), ticks[3] + ticks[4]


@contextlib.contextmanager
def one_thread():
    """Run the block on one intra-op thread: the data loading done in the main process (num_workers=0).

    One image's decoding, augmentation and padding are too small to share between threads: two threads
    load a small batch slower than one (docs/performance.md has the figures). Loader worker
    processes already run on one thread each (PyTorch sets it); this gives the main process the same.
    """
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
