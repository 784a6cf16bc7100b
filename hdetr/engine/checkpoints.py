"""The training run's checkpoint files: their format, writing them, and finding the one to resume
from (their names: ``hdetr.run_folder``).

``last.pt`` holds the full training state (written atomically, the file it replaces kept as
``prev.pt``, so two complete checkpoints exist at every moment); ``best.pt`` the weights of the best
evaluation. Every checkpoint goes through ``write_checkpoint``: tests that need a slow or failing
write patch it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..weights import TRAIN_FORMAT, CheckpointError, safe_torch_load
from ..errors import UserError
from ..files import atomic_write, temp_files
from ..run_folder import BEST, LAST, PREV

CHECKPOINT_FORMAT = TRAIN_FORMAT
# Settings that choose how a result is computed, not what: a run may resume under another value (the
# fast and reference attention paths agree to rounding; tests/unit/test_fast_paths.py).
PATH_SWITCHES = {("model", "attention_impl")}



# What --resume needs from a checkpoint besides its counters (each a state dict or a mapping).
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "config")

def write_checkpoint(state: dict, path) -> None:
    torch.save(state, path)


def save_last(out: Path, state: dict) -> None:
    """``out/last.pt``; the file it replaces becomes ``prev.pt``."""
    atomic_write(out / LAST, lambda p: write_checkpoint(state, p), previous=out / PREV)


def save_best(out: Path, state: dict) -> None:
    atomic_write(out / BEST, lambda p: write_checkpoint(state, p))


def has_run(out: Path) -> bool:
    return (out / LAST).exists() or (out / PREV).exists()


def remove_unfinished_writes(out: Path, log) -> None:
    """Temporary files of a write that was killed are removed, never read."""
    for tmp in temp_files(out / LAST) + temp_files(out / PREV):
        log(f"note: removing {tmp.name}, an unfinished checkpoint write of an interrupted run")
        tmp.unlink(missing_ok=True)


def load_latest(out: Path, log) -> tuple[Path, dict]:
    """The newest complete training checkpoint: last.pt, or prev.pt when last.pt is missing or damaged."""
    problems = []
    for path in (out / LAST, out / PREV):
        if not path.exists():
            continue
        try:
            ckpt = safe_torch_load(path)
        except CheckpointError as e:
            problems.append(str(e))
            log(f"warning: {e}; trying the previous checkpoint")
            continue
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            problems.append(f"{path}: not an hdetr training checkpoint")
            continue
        missing = [k for k in RESUME_KEYS if not isinstance(ckpt.get(k), dict)]
        if missing:
            problems.append(f"{path}: incomplete checkpoint, no {', '.join(missing)}")
            log(f"warning: {problems[-1]}; trying the previous checkpoint")
            continue
        return path, ckpt
    if not problems:
        raise UserError(f"--resume: no {LAST} in {out}")
    raise UserError("--resume: no usable checkpoint in " + str(out) + ":\n  " + "\n  ".join(problems))


def last_good(out: Path, last_saved_step: int | None) -> str:
    """Where a stopped run can resume from, for error messages."""
    if last_saved_step is None:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {out / LAST} (step {last_saved_step})"
