"""Early stopping (train.patience / train.best_metric) and the optional MLflow / W&B trackers (offline)."""

from __future__ import annotations

import socket

import pytest
import torch

from hdetr.cli import main
from hdetr.config import ConfigError, build_config
from hdetr.engine import trackers as trackers_mod
from hdetr.engine.runlog import read_records
from hdetr.errors import UserError
from support import layout_builders as lb
from support.engine_helpers import TINY_MODEL


@pytest.fixture(scope="module")
def data(module_dir):
    """4 train images (2 steps per epoch at batch 2), 2 val images."""
    return lb.write_folder_splits(module_dir("es") / "ds")


def _args(data, out, *extra):
    return ["train", "synthetic_small", *TINY_MODEL, f"data.train={data}", "--out", str(out), "--no-progress",
            *extra]


class ScriptedEval:
    """Stands in for the evaluation: returns the next scripted metrics, counts its calls."""

    def __init__(self, ap, ap50):
        self.values, self.calls = list(zip(ap, ap50)), 0

    def __call__(self, *args, **kwargs):
        ap, ap50 = self.values[self.calls]
        self.calls += 1
        return {"AP": ap, "AP50": ap50, "AP75": 0.0}


@pytest.mark.slow
def test_early_stop_at_the_expected_evaluation_and_resume_does_not_restart(data, tmp_path, monkeypatch, capsys):
    # AP50 best at the 2nd evaluation, then 2 without improvement: with patience 2 the run ends after the
    # 4th epoch of 8. AP alone (falling from the start) would have stopped it after the 3rd.
    scripted = ScriptedEval(ap=[0.3, 0.2, 0.1, 0.05] + [0.0] * 4, ap50=[0.1, 0.2, 0.15, 0.12] + [0.9] * 4)
    monkeypatch.setattr("hdetr.engine.train.evaluate", scripted)
    out = tmp_path / "run"
    assert main(_args(data, out, "train.epochs=8", "train.patience=2", "train.best_metric=AP50")) == 0
    summary = capsys.readouterr().out
    assert scripted.calls == 4
    assert "trained 8 steps, best AP50 0.200" in summary
    assert "stopped early after epoch 4 of 8 (AP50 did not improve for 2 evaluations, train.patience)" in summary
    records = read_records(out / "metrics.jsonl")
    assert records[-1]["early_stop"] == {"epoch": 3, "step": 8, "metric": "AP50", "best": 0.2,
                                         "evaluations_without_improvement": 2, "patience": 2}
    best = torch.load(out / "best.pt", weights_only=False)
    assert best["metrics"]["AP50"] == 0.2 and best["epoch"] == 2  # kept from the 2nd evaluation
    # Resume: nothing left to train, nothing evaluated again, the early-stop record stays.
    assert main(_args(data, out, "train.epochs=8", "train.patience=2", "train.best_metric=AP50", "--resume")) == 0
    again = capsys.readouterr().out
    assert scripted.calls == 4 and "trained 8 steps" in again and "stopped early after epoch 4" in again
    assert "nothing left to train" in again
    assert read_records(out / "metrics.jsonl") == records
    # A larger patience on resume lets the run continue from where it stopped (not from the start).
    assert main(_args(data, out, "train.epochs=8", "train.patience=5", "train.best_metric=AP50", "--resume")) == 0
    assert scripted.calls == 8 and "trained 16 steps, best AP50 0.900" in capsys.readouterr().out


def test_best_metric_must_exist_for_the_validation_set(data, tmp_path, capsys):
    assert main(_args(data, tmp_path / "run", "train.best_metric=APr")) == 2
    assert "train.best_metric=APr is not a metric of this validation set" in capsys.readouterr().err


def test_no_early_stop_without_patience(data, tmp_path, monkeypatch, capsys):
    scripted = ScriptedEval(ap=[0.3, 0.2, 0.1], ap50=[0.3, 0.2, 0.1])
    monkeypatch.setattr("hdetr.engine.train.evaluate", scripted)
    assert main(_args(data, tmp_path / "run", "train.epochs=3")) == 0
    assert scripted.calls == 3 and "stopped early" not in capsys.readouterr().out


def test_patience_and_best_metric_are_validated():
    with pytest.raises(ConfigError, match="train.patience must be >= 0"):
        build_config({}, ["train.patience=-1"])
    with pytest.raises(ConfigError, match="train.best_metric must be one of"):
        build_config({}, ["train.best_metric=loss"])
    with pytest.raises(ConfigError, match="unknown tracker"):
        build_config({}, ["train.trackers=[comet]"])


# --- trackers ----------------------------------------------------------------------------------------


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    """Any connection from this process to a non-local address fails (and is recorded); HTTP clients
    in helper processes are pointed at a closed local port; both trackers are told to stay offline."""
    attempts = []
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError("network access is forbidden in tests")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    yield attempts
    assert attempts == []


def test_scalars_are_the_metrics_jsonl_numbers():
    rec = {"epoch": 0, "iter": 2, "step": 2, "lr": 1e-4, "losses": {"loss": 3.0, "loss_ce": 1.0}, "time": 4.5}
    assert trackers_mod.scalars(rec) == {"train/lr": 1e-4, "train/loss": 3.0, "train/loss_ce": 1.0, "train/time": 4.5}
    ev = {"epoch": 0, "step": 2, "train_time": 1.0, "eval": {"AP": 0.5, "AP50": 0.7}}
    assert trackers_mod.scalars(ev) == {"eval/AP": 0.5, "eval/AP50": 0.7}


def test_missing_tracker_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'hdetr\[wandb\]'"):
        trackers_mod.check_installed(["mlflow", "wandb"] if real("mlflow") else ["wandb"])


def _expected(out):
    """step -> scalars, from metrics.jsonl: what every tracker must have received."""
    return [(r["step"], trackers_mod.scalars(r)) for r in read_records(out / "metrics.jsonl")]


def test_mlflow_offline_gets_config_scalars_and_curves(data, tmp_path, no_network, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    assert main(_args(data, out, "train.epochs=2", "train.max_iters=3", "train.trackers=[mlflow]")) == 0
    assert main(_args(data, out, "train.epochs=2", "train.trackers=[mlflow]", "--resume")) == 0
    client = MlflowClient(tracking_uri=(out / "mlruns").absolute().as_uri())
    exp = client.get_experiment_by_name("hdetr")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1  # the resume continued the same MLflow run
    run = runs[0]
    assert run.data.params["model.num_queries"] == "10" and run.data.params["train.trackers"] == "['mlflow']"
    want: dict[str, list] = {}
    for step, values in _expected(out):
        for k, v in values.items():
            want.setdefault(k, []).append((step, v))
    for key in ("train/loss", "train/lr", "eval/AP", "eval/AP50"):
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert got == pytest.approx(dict(want[key])), key
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert artifacts == ["images/curves.png", "images/predictions.png"]
    assert (out / "predictions.png").is_file()
    assert run.info.status == "FINISHED"


def test_wandb_offline_gets_config_scalars_and_curves(data, tmp_path, no_network, monkeypatch, capsys):
    pytest.importorskip("wandb")
    logged = []
    real_log = trackers_mod.WandbTracker.log
    monkeypatch.setattr(trackers_mod.WandbTracker, "log",
                        lambda self, values, step: (logged.append((step, dict(values))), real_log(self, values, step)))
    out = tmp_path / "run"
    assert main(_args(data, out, "train.epochs=1", "train.trackers=[wandb]")) == 0
    assert logged == _expected(out)
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    raw = next(run_dir.glob("run-*.wandb")).read_bytes()
    for needle in (b"eval/AP50", b"train/loss_giou", b"num_queries"):
        assert needle in raw  # the scalars and the config reached W&B's offline run file
    assert list(run_dir.glob("files/media/images/**/curves_*.png"))
    assert list(run_dir.glob("files/media/images/**/predictions_*.png"))
