"""Interrupted training resumes bit-exact: SIGKILL at seeded random moments (some in the middle of a
checkpoint write), SIGTERM and SIGINT, then --resume, end on the parameters of a run never interrupted.

The training runs as a subprocess of ``hdetr train`` on the CPU (one thread, like the reference run).
For the kills inside a write, the subprocess's checkpoint writer is patched to hold each temporary file
for a while before its rename, so that a kill can land while ``.last.pt.*.tmp`` exists.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support.engine_helpers import TINY_MODEL, assert_same_tensors, load_state
from support.paths import REPO

pytestmark = [pytest.mark.process, pytest.mark.slow]

# 40 epochs of 4 steps: the kills fall on both sides of epoch ends, and after 22 kills steps are left to
# do however fast the machine runs the launches between them (each kill costs a few steps).
ITERS = 160
COMMON = ["train.epochs=41", f"train.max_iters={ITERS}", "train.save_every=1", "train.eval_every=10",
          "train.lr_drop=1", "model.dropout=0.1"]
WRITE_DELAY = "0.6"
SEED = 20261125
# What happens to each launch: a SIGKILL once training runs ("kill"), a SIGKILL while a checkpoint's
# temporary file exists ("kill_in_write"), a polite stop ("term", "int"); the last launch runs to the end.
# 22 SIGKILLs in all, half of them inside a checkpoint write.
EVENTS = (["kill_in_write", "kill"] * 5 + ["term"] + ["kill_in_write", "kill"] * 6 + ["int"])
MIN_KILLS = 20


# `hdetr` with hdetr.engine.checkpoints.write_checkpoint slowed down by argv[1] seconds.
SLOW_WRITES = """
import sys, time
from hdetr.engine import checkpoints
write, delay = checkpoints.write_checkpoint, float(sys.argv.pop(1))
def slow(state, path):
    write(state, path)
    time.sleep(delay)
checkpoints.write_checkpoint = slow
from hdetr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cmd(data: Path, out: Path, resume: bool, write_delay: str | None = None) -> list[str]:
    launch = ["-c", SLOW_WRITES, write_delay] if write_delay else ["-m", "hdetr.cli"]
    cmd = [sys.executable, *launch, "train", "synthetic_small", *TINY_MODEL, f"data.train={data}",
           *COMMON, "--out", str(out), "--no-progress", "--device", "cpu"]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _has_checkpoint(out: Path) -> bool:
    return (out / "last.pt").exists() or (out / "prev.pt").exists()


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Poll ``cond`` until true; False if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("the training subprocess made no progress")


@pytest.fixture(scope="module")
def reference(synth_data, module_dir):
    out = module_dir("uninterrupted")
    subprocess.run(_cmd(synth_data, out, False), env=_env(), cwd=REPO, check=True, capture_output=True, timeout=300)
    return load_state(out / "last.pt")


def test_killed_and_stopped_runs_resume_bit_exact(synth_data, tmp_path, reference):
    rng = random.Random(SEED)
    out = tmp_path / "run"
    survived = {"kill": 0, "kill_in_write": 0, "tmp_left": 0, "term": 0, "int": 0}
    for n, event in enumerate(EVENTS + ["finish"]):
        log = tmp_path / f"launch{n}.log"
        resume = _has_checkpoint(out)
        with open(log, "w") as f:
            delay = WRITE_DELAY if event == "kill_in_write" else None
            proc = subprocess.Popen(_cmd(synth_data, out, resume, delay), env=_env(), cwd=REPO, stdout=f,
                                    stderr=subprocess.STDOUT)
        try:
            training = lambda: " iter " in log.read_text()  # noqa: E731
            if event == "kill_in_write":
                if _wait_for(lambda: any(out.glob(".last.pt.*.tmp")), proc):
                    time.sleep(rng.uniform(0.0, 0.4))  # the write is held 0.6 s: still inside it
                    tmp_now = any(out.glob(".last.pt.*.tmp"))
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(60)
                    survived["kill_in_write"] += 1
                    survived["tmp_left"] += tmp_now and any(out.glob(".last.pt.*.tmp"))
            elif event == "kill":
                if _wait_for(training, proc):
                    time.sleep(rng.uniform(0.0, 0.5))
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(60)
                    survived["kill"] += 1
            elif event in ("term", "int"):
                if _wait_for(training, proc):
                    time.sleep(rng.uniform(0.0, 0.5))
                    proc.send_signal(signal.SIGTERM if event == "term" else signal.SIGINT)
                    rc = proc.wait(120)
                    text = log.read_text()
                    if rc != 0:  # 0: it had already finished all steps
                        assert rc == (143 if event == "term" else 130), text
                        assert "Continue with --resume" in text and "Traceback" not in text, text
                        steps = int(re.search(r"\((\d+) steps done\); checkpoint", text)[1])
                        assert load_state(out / "last.pt")["step"] == steps  # saved where it stopped
                        survived[event] += 1
            else:
                assert proc.wait(300) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if resume and n > 0:
            assert "resumed" in log.read_text() or proc.returncode != 0
    print(f"interruptions survived: {survived}")
    assert not list(out.glob(".*.tmp")), "a stale temporary checkpoint file was left"
    assert survived["kill"] + survived["kill_in_write"] >= MIN_KILLS
    assert survived["tmp_left"] >= 1, "no kill landed inside a checkpoint write"
    final = load_state(out / "last.pt")
    assert final["step"] == ITERS
    assert_same_tensors(reference["model"], final["model"])
    for a, b in zip(reference["optimizer"]["state"].values(), final["optimizer"]["state"].values()):
        assert_same_tensors(a, b)


def test_damaged_last_checkpoint_falls_back_to_the_previous_one(synth_data, tmp_path, capsys):
    from hdetr.config import load_config
    from hdetr.engine.train import train

    def run(iters, resume=False):
        cfg = load_config("synthetic_small", [*TINY_MODEL, f"data.train={synth_data}", *COMMON,
                                              f"train.max_iters={iters}"])
        return train(cfg, tmp_path, resume=resume, device="cpu", progress=False)

    run(2)
    assert load_state(tmp_path / "prev.pt")["step"] == 1 and load_state(tmp_path / "last.pt")["step"] == 2
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(data[:100])  # a write that was killed
    capsys.readouterr()
    result = run(3, resume=True)
    log = capsys.readouterr().out
    assert "not a readable PyTorch checkpoint" in log and "trying the previous checkpoint" in log
    assert "resumed" in log and "prev.pt" in log
    assert "removing .last.pt.abc123.tmp" in log and not (tmp_path / ".last.pt.abc123.tmp").exists()
    assert result.steps == 3 and load_state(tmp_path / "last.pt")["step"] == 3


def test_resume_refuses_when_no_checkpoint_is_readable(synth_data, tmp_path):
    from hdetr.config import load_config
    from hdetr.engine.train import train
    from hdetr.errors import UserError

    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 not really")
    cfg = load_config("synthetic_small", [*TINY_MODEL, f"data.train={synth_data}", *COMMON])
    with pytest.raises(UserError, match="no usable checkpoint"):
        train(cfg, tmp_path, resume=True, device="cpu", progress=False)


def test_checkpoint_write_keeps_the_previous_file(tmp_path):
    from hdetr.files import atomic_write, temp_files

    target, prev = tmp_path / "last.pt", tmp_path / "prev.pt"
    atomic_write(target, lambda p: torch.save({"v": 1}, p), previous=prev)
    atomic_write(target, lambda p: torch.save({"v": 2}, p), previous=prev)

    def boom(p):
        Path(p).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, boom, previous=prev)
    assert load_state(target) == {"v": 2} and load_state(prev) == {"v": 1}
    assert temp_files(target) == []
