"""``--threads N``: the intra-op threads of torch's CPU pool, for the commands that compute.

Parsing stays free of torch (``hdetr VERB --help`` answers at once); torch is imported only when the
count is applied, by the command's ``run``.
"""

from __future__ import annotations

import argparse
import os


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
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


def prefer_passive_waiting() -> None:
    """Let torch's OpenMP threads sleep, not spin, while they wait (``OMP_WAIT_POLICY=PASSIVE``),
    unless the user chose a policy.

    GNU OpenMP's default makes a thread that reaches a barrier spin for a while before it sleeps; when
    other processes compete for the cores, the spinning threads take the CPU time their partners need
    and the process's CPU time per step doubles (docs/performance.md, "Contention"). It is read once,
    when libgomp loads, so this must run before torch is imported.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
