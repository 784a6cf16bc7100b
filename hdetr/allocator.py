"""glibc malloc policy for hdetr's own CPU work: large blocks reused from the heap, not mapped afresh.

glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it
to the kernel on ``free``. A full-size model's big activations (146 MB per encoder FFN, tens of MB per
attention layer) are allocated and freed layer after layer, so each one faults its pages in again, one
minor page fault per 4 KiB; on virtual machines a fault is slow. With ``M_MMAP_MAX`` 0 those blocks come
from the heap and are reused, and ``M_TRIM_THRESHOLD`` 1 GiB keeps a freed heap top for the next layer.
benchmarks/allocator.py measures it (docs/performance.md, "The allocator"): 6 % less CPU time per eval
forward and 10 % per predicted image, page faults from hundreds of thousands to none; no gain for a
training step, whose buffers are kept for the backward anyway.

So the CLI sets it for the inference verbs (``INFERENCE_VERBS``) only, and never for ``bench``: its
side-by-side comparisons run the official code in the same process, whose time must stay as it comes.
A library user can call ``reuse_large_blocks()`` at start. Torch-free.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 1 << 30
INFERENCE_VERBS = {"eval", "predict", "serve"}
OPT_OUT = "HDETR_MALLOC"  # =default: leave the allocator as it comes


def reuse_large_blocks() -> str:
    """Apply the policy to this process; returns what was done (for logs and tests)."""
    if os.environ.get(OPT_OUT, "") == "default":
        return f"not set: {OPT_OUT}=default"
    if not sys.platform.startswith("linux"):
        return "not set: not Linux"
    # The user's own choice wins: another allocator preloaded, or glibc's own tunables set.
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return "not set: another allocator is preloaded (LD_PRELOAD)"
    if any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "not set: glibc malloc settings in the environment"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt parameters of these numbers)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "not set: not glibc"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "not set: mallopt refused"
    return "set: M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB"
