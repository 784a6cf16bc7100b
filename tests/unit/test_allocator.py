"""hdetr.allocator: glibc serves large blocks from the heap once the policy is set, and the CLI sets it
for the inference verbs, not for train and never for bench (whose comparisons run the official code in-process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hdetr import allocator, cli

# In a fresh process: how many blocks glibc has mmapped (mallinfo2().hblks) after a 64 MiB malloc.
PROBE = """
import ctypes, sys
from hdetr.allocator import reuse_large_blocks
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
done = reuse_large_blocks()
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
print(done, "|", libc.mallinfo2().hblks - before)
"""

linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                 reason="glibc's mallopt")


def _probe(**env) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "HDETR_MALLOC")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    done, mapped = out.stdout.strip().split("|")
    return done.strip(), int(mapped)


@pytest.mark.process
@linux_glibc
def test_policy_serves_large_blocks_from_the_heap():
    done, mapped = _probe()
    assert done.startswith("set:") and mapped == 0


@pytest.mark.process
@linux_glibc
def test_without_the_policy_glibc_maps_large_blocks_and_user_settings_win():
    done, mapped = _probe(HDETR_MALLOC="default")
    assert done.startswith("not set") and mapped == 1
    done, mapped = _probe(MALLOC_MMAP_THRESHOLD_="1048576")
    assert "glibc malloc settings" in done and mapped == 1


def test_cli_sets_it_for_inference_verbs_not_for_train_or_bench(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(allocator, "reuse_large_blocks", lambda: calls.append(1) or "set")
    assert cli.main(["predict", str(tmp_path / "no_model"), str(tmp_path / "x.jpg"), "--out", str(tmp_path / "p")]) == 2
    assert calls == [1]
    assert cli.main(["bench", "speed", "--repeats", "0"]) == 2  # refused before measuring anything
    assert cli.main(["train", str(tmp_path / "no_config.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert calls == [1]
