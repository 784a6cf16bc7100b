"""What a training run leaves behind for people: metrics.jsonl, TensorBoard events, curves.png.

Only rank 0 creates a ``RunLog``. ``metrics.jsonl`` has one JSON object per line: training records
(``epoch``, ``iter`` within the epoch, ``step`` overall, ``lr``, ``losses``, ``time``, ``train_time``,
``train_cpu_time``) every ``log_every`` steps, and evaluation records (``epoch``, ``step``,
``train_time``, ``train_cpu_time``, ``eval``) after each evaluation. ``time`` is wall time since this
process started training; ``train_time`` counts only the training steps (data loading +
forward/backward/update) of the whole run, resumes included, and ``train_cpu_time`` the CPU seconds
of the training process over those steps.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..files import atomic_write
from ..run_folder import CURVES, METRICS

PREDICTIONS_FILE = "predictions.png"  # written only when trackers are on
PREDICTION_IMAGES = 8


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a crash: everything after it is suspect
    return out


class RunLog:
    """metrics.jsonl, plus TensorBoard when installed and the trackers named in ``trackers``
    (hdetr.engine.trackers: mlflow, wandb), which get the same records."""

    def __init__(self, out_dir: Path, resume_step: int | None = None, trackers: list[str] = (),
                 config: dict | None = None):
        self.out_dir = out_dir
        self.trackers = None
        if trackers:
            from .trackers import Trackers

            self.trackers = Trackers(list(trackers), out_dir, config or {}, resume=resume_step is not None)
        self.path = out_dir / METRICS
        if resume_step is not None:
            # Records written after the checkpoint we resume from will be produced again: drop them.
            kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.path, lambda p: Path(p).write_text(text))
        elif self.path.exists():
            self.path.unlink()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self.trackers is not None:
            self.trackers.write(record)
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.get("losses", {}).items():
                self.tb.add_scalar(f"train/{k}", v, step)
            if "lr" in record:
                self.tb.add_scalar("train/lr", record["lr"], step)
            for k, v in record.get("eval", {}).items():
                self.tb.add_scalar(f"eval/{k}", v, step)

    def plot(self, step: int) -> Path | None:
        """curves.png from metrics.jsonl, also handed to the trackers."""
        path = plot_curves(self.out_dir)
        if self.trackers is not None:
            self.trackers.image(path, step)
        return path

    def predictions(self, model_dir: Path, images: list[Path], step: int) -> Path | None:
        """For the trackers only: the final model's detections on a few validation images
        (predictions.png), the picture a curve cannot give."""
        if self.trackers is None or not images:
            return None
        from ..api import prediction_grid

        path = prediction_grid(model_dir, images, self.out_dir / PREDICTIONS_FILE)
        self.trackers.image(path, step)
        return path

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.trackers is not None:
            self.trackers.close()


def plot_curves(out_dir: Path) -> Path | None:
    """Loss terms over steps and AP/AP50 over epochs, from metrics.jsonl."""
    records = read_records(out_dir / METRICS)
    train = [r for r in records if "losses" in r]
    evals = [r for r in records if "eval" in r]
    if not train and not evals:
        return None
    # matplotlib keeps a font cache under $HOME; with a read-only home it goes under the run folder.
    if "MPLCONFIGDIR" not in os.environ and not os.access(Path.home(), os.W_OK):
        os.environ["MPLCONFIGDIR"] = str(Path(out_dir) / ".cache" / "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    keys = ["loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_one2many", "loss_ce_enc"]
    steps = [r["step"] for r in train]
    for key in keys:
        ys = [r["losses"].get(key, math.nan) for r in train]
        if any(math.isfinite(y) for y in ys):
            ax_loss.plot(steps, ys, label=key, linewidth=1)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.set_title("training losses")
    ax_loss.legend(fontsize=7)
    if evals:
        epochs = [r["epoch"] + 1 for r in evals]
        for key in ("AP", "AP50", "AP75"):
            ax_ap.plot(epochs, [r["eval"].get(key, math.nan) for r in evals], marker="o", label=key)
        ax_ap.legend()
    ax_ap.set_xlabel("epoch")
    ax_ap.set_title("validation")
    ax_ap.set_ylim(0, 1)
    fig.tight_layout()
    path = out_dir / CURVES
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
