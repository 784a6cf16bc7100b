"""Optional experiment trackers: MLflow and Weights & Biases, offline, fed what metrics.jsonl gets.

``train.trackers=[mlflow]`` / ``[wandb]`` (extras ``hdetr[mlflow]``, ``hdetr[wandb]``) turn them on;
they are off by default. ``[tensorboard]`` (extra ``hdetr[tensorboard]``) asks for the TensorBoard events
the run log writes whenever the package is installed, and fails before training when it is not. Both write into the run folder and never need a network:

* MLflow: a file store at ``RUN/mlruns`` (``mlflow ui --backend-store-uri RUN/mlruns`` to browse,
  with the full ``mlflow`` package); experiment ``hdetr``, one MLflow run per training run (a resume
  continues it). MLflow 3 only opens a file store with ``MLFLOW_ALLOW_FILE_STORE=true``, which is set
  for it unless the user set it.
* W&B: offline mode into ``RUN/wandb`` (``wandb sync RUN/wandb/offline-run-*`` uploads it later, if
  wanted). ``WANDB_MODE`` set by the user wins, e.g. ``WANDB_MODE=online``.

Each gets the config (flattened ``section.key`` parameters), every scalar of every metrics.jsonl
record (``train/<loss>``, ``train/lr``, ``train/time``..., ``eval/<metric>``, ``early_stop/...``) at
its step, and the images the run draws (curves.png after each evaluation and at the end). A tracker that
is not installed fails before training with the pip command to run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import UserError

STATE_FILE = "trackers.json"  # the tracker run ids, so that a resume continues the same runs
EXTRA = {"mlflow": ("mlflow", "hdetr[mlflow]"), "wandb": ("wandb", "hdetr[wandb]"),
         "tensorboard": ("tensorboard", "hdetr[tensorboard]")}


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def scalars(record: dict) -> dict[str, float]:
    """The numbers of one metrics.jsonl record, named as the trackers show them."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if k in ("epoch", "iter", "step"):
            continue
        if isinstance(v, dict):
            group = "train" if k == "losses" else k
            out.update({f"{group}/{kk}": float(vv) for kk, vv in v.items()
                        if isinstance(vv, (int, float)) and not isinstance(vv, bool)})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"train/{k}"] = float(v)
    if "eval" in record or "early_stop" in record:
        out = {k: v for k, v in out.items() if not k.startswith("train/")}  # eval records repeat the times
    return out


def check_installed(names: list[str]) -> None:
    """Fail before training, not after it, when a tracker's package is missing."""
    import importlib.util

    for name in names:
        module, extra = EXTRA[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"train.trackers: {name} is not installed; pip install '{extra}' "
                            f"(or drop it from train.trackers)")


class MlflowTracker:
    def __init__(self, out_dir: Path, config: dict, run_id: str | None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # MLflow 3 keeps the file store in "maintenance mode" behind this switch; a database store would
        # need SQLAlchemy and a server-side install, the file store needs nothing.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=(out_dir / "mlruns").absolute().as_uri())
        if run_id is None:
            exp = self.client.get_experiment_by_name("hdetr")
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("hdetr")
            self.run_id = self.client.create_run(exp_id, run_name=out_dir.name).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        else:
            self.run_id = run_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def image(self, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="images")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    def __init__(self, out_dir: Path, config: dict, run_id: str | None):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.wandb = wandb
        settings = wandb.Settings(console="off", x_disable_stats=True, disable_git=True,
                                  x_disable_machine_info=True)
        self.run = wandb.init(project="hdetr", dir=str(out_dir), config=config, name=out_dir.name, id=run_id,
                              resume="allow" if run_id else None, settings=settings)
        self.run_id = self.run.id

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, path: Path, step: int) -> None:
        self.run.log({f"images/{path.stem}": self.wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKER_CLASSES = {"mlflow": MlflowTracker, "wandb": WandbTracker}


class Trackers:
    """The trackers a run uses; every call reaches each of them."""

    def __init__(self, names: list[str], out_dir: Path, config: dict, resume: bool):
        check_installed(names)
        state_path = out_dir / STATE_FILE
        saved = {}
        if resume and state_path.is_file():
            try:
                saved = json.loads(state_path.read_text())
            except (OSError, ValueError):
                saved = {}
        # TensorBoard is written by the run log itself (runlog.py); it is named here to be checked.
        self.items = {name: TRACKER_CLASSES[name](out_dir, config, saved.get(name)) for name in names
                      if name in TRACKER_CLASSES}
        if self.items:
            state_path.write_text(json.dumps({n: t.run_id for n, t in self.items.items()}) + "\n")

    def write(self, record: dict) -> None:
        values = scalars(record)
        if values:
            for t in self.items.values():
                t.log(values, int(record.get("step", 0)))

    def image(self, path: Path | None, step: int) -> None:
        if path is not None and path.is_file():
            for t in self.items.values():
                t.image(path, step)

    def close(self) -> None:
        for t in self.items.values():
            t.close()
