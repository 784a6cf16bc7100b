"""hdetr bench ablation on a micro budget: two schemes, one seed, a few iterations, in this process."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import ablation, ablation_report, ablation_runs, ablation_setup
from benchmarks.__main__ import build_parser
from hdetr.hybrid import query_groups

MICRO = [
    "--set", "train_images=8", "--set", "val_images=4", "--set", "image_size=64", "--set", "train_scales=64",
    "--set", "epochs=2", "--set", "lr_drop=1", "--set", "batch_size=4", "--set", "dec_layers=2",
    "--set", "one2many_layers=1", "--set", "dim_feedforward=64", "--set", "num_queries=5",
    "--set", "num_queries_one2many=10", "--set", "k=2",
]
SCHEME_KEYS = {"AP", "AP50", "AP75", "curve", "train_s_per_iter", "peak_mem_mb", "infer_img_per_s", "gflops"}


def _args(tmp_path, *extra):
    return build_parser().parse_args(["ablation", "--regime", "toy", "--seeds", "1", "--schemes", "baseline,branch", "--jobs", "0", "--threads", "1",
        "--device", "cpu", "--timing-rounds", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--name", "micro",
        *MICRO, *extra,
    ])


@pytest.mark.process
@pytest.mark.slow
def test_micro_ablation_writes_real_numbers_and_resumes(tmp_path, capsys):
    assert ablation.run_ablation(_args(tmp_path)) == 0
    doc = json.loads((tmp_path / "out" / "micro.json").read_text())
    assert set(doc) == {"schemes", "config", "machine"}
    assert set(doc["schemes"]) == {"baseline", "branch"}
    assert isinstance(doc["machine"], str) and doc["machine"]
    assert doc["config"]["queries"] == {"baseline": [5, 5], "branch": [15, 5]}
    for name, s in doc["schemes"].items():
        assert set(s) == SCHEME_KEYS, name
        for key in ("AP", "AP50", "AP75"):
            assert len(s[key]) == 1 and all(0.0 <= v <= 1.0 for v in s[key]), (name, key, s[key])
        curve = s["curve"]
        assert [p[0] for p in curve] == [2, 4]  # evaluated after each of the 2 epochs of 2 iterations
        assert all(len(p) == 3 and 0.0 <= p[2] <= 1.0 for p in curve)
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(curve, curve[1:]))
        assert curve[0][1] > 0 and curve[-1][2] == pytest.approx(s["AP"][0])
        for key in ("train_s_per_iter", "peak_mem_mb", "infer_img_per_s", "gflops"):
            assert math.isfinite(s[key]) and s[key] > 0, (name, key)
    # One inference forward costs the same: the branch's extra queries exist only in training.
    assert doc["schemes"]["branch"]["gflops"] == pytest.approx(doc["schemes"]["baseline"]["gflops"])
    assert (tmp_path / "out" / "micro.png").stat().st_size > 0
    nms = json.loads((tmp_path / "out" / "micro_nms.json").read_text())
    for name, d in nms["schemes"].items():
        assert d["AP"] == pytest.approx(doc["schemes"][name]["AP"])  # the diagnostic's raw AP is the run's
        assert all(0.0 <= v <= 1.0 for v in d["AP_nms"] + d["AP50_nms"])
    out = capsys.readouterr().out
    assert "baseline" in out and "branch" in out and "AP@" in out

    # Again: both runs are found and skipped, the numbers stay.
    assert ablation.run_ablation(_args(tmp_path)) == 0
    again = json.loads((tmp_path / "out" / "micro.json").read_text())
    assert "2 finished run(s) found, skipped" in capsys.readouterr().out
    for name in doc["schemes"]:
        assert again["schemes"][name]["AP"] == doc["schemes"][name]["AP"]
        assert again["schemes"][name]["curve"] == doc["schemes"][name]["curve"]


def test_scheme_configs_follow_the_paper():
    b = ablation_setup.DEFAULT
    assert b.seeds >= 3 and b.epochs > b.lr_drop >= b.epochs - 2
    assert ablation_setup.tokens(min(b.train_scales)) >= b.num_queries + b.num_queries_one2many
    from hdetr.config import load_config
    from hdetr.hybrid import matching_plan

    cfgs = {s: load_config(ablation.PRESET, ablation.run_overrides(s, 0, b, "DATA")) for s in ablation.SCHEMES}
    total = b.num_queries + b.num_queries_one2many
    assert cfgs["baseline"].model.num_queries == b.num_queries and query_groups(cfgs["baseline"]).one2many == 0
    assert cfgs["baseline_more_queries"].model.num_queries == total
    assert cfgs["branch"].model.num_queries == b.num_queries and query_groups(cfgs["branch"]).one2many == b.num_queries_one2many
    for s in ("epoch", "layer"):
        assert cfgs[s].model.num_queries == total and query_groups(cfgs[s]).one2many == 0
    # Everything but the scheme settings is shared.
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k not in ("hybrid",)} | {  # noqa: E731
        "model": {k: v for k, v in c.model.__dict__.items() if k != "num_queries"}}
    assert all(strip(c) == strip(cfgs["baseline"]) for c in cfgs.values())
    e = cfgs["epoch"]
    one2many_epochs = [ep for ep in range(b.epochs) if max(matching_plan(e, ep).layer_repeats) > 1]
    assert one2many_epochs == list(range(round(b.epoch_ratio * b.epochs)))
    plan = matching_plan(cfgs["layer"], 0)
    assert plan.layer_repeats == (b.k,) * b.one2many_layers + (1,) * (b.dec_layers - b.one2many_layers)


def test_curve_helpers():
    def run(*points):
        return {"evals": [{"step": it, "train_time": 10 * sec, "train_cpu_time": sec, "AP": ap}
                          for it, sec, ap in points]}

    runs = [run((10, 1.0, 0.1), (20, 2.0, 0.3)), run((10, 3.0, 0.3), (20, 4.0, 0.5))]
    assert ablation_report.mean_curve(runs, "cpu") == [[10, 2.0, pytest.approx(0.2)], [20, 3.0, pytest.approx(0.4)]]
    assert ablation_report.mean_curve(runs, "wall")[0][1] == 20.0
    curve = ablation_report.mean_curve(runs, "cpu")
    assert ablation_report.interpolate(curve, 2.5) == pytest.approx(0.3)
    assert math.isnan(ablation_report.interpolate(curve, 5.0))


def test_budget_settings_are_checked():
    from hdetr.errors import UserError

    with pytest.raises(UserError, match="encoder tokens"):
        ablation.check_budget(ablation._apply_settings(ablation_setup.DEFAULT, ["image_size=64", "train_scales=64"]))
    with pytest.raises(UserError, match="KEY=VALUE"):
        ablation._apply_settings(ablation_setup.DEFAULT, ["nope=1"])
    assert ablation._apply_settings(ablation_setup.DEFAULT, ["epoch_ratio=1/2"]).epoch_ratio == 0.5


@pytest.mark.process
def test_run_folder_lock_is_exclusive_across_processes(tmp_path):
    # A run left training by a killed session holds its folder's lock: another session must see that
    # (None) rather than start the same run twice; once released, the folder can be taken again.
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(tmp_path / ablation_runs.LOCK_FILE)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert ablation_runs._try_lock(tmp_path) is None
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    lock = ablation_runs._try_lock(tmp_path)
    while lock is None and time.monotonic() < deadline:
        time.sleep(0.1)
        lock = ablation_runs._try_lock(tmp_path)
    assert lock is not None
    lock.close()


@pytest.mark.process
def test_stopping_the_pool_stops_its_runs(tmp_path):
    """SIGTERM to `hdetr bench ablation` (say, from pkill) must not leave its training processes running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from support.paths import REPO, TESTS

    # The helper imports `support` (tests/) and `benchmarks` (the repository root), whatever PYTHONPATH holds.
    path = os.pathsep.join(filter(None, [str(TESTS), str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, str(TESTS / "support" / "pool_children.py"), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": path})
    pid_files = [tmp_path / f"run{i}" / "pid" for i in range(2)]
    deadline = time.time() + 300
    while not all(p.exists() and p.read_text() for p in pid_files):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in pid_files]
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert "stopping 2 run(s)" in out
    for pid in pids:
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"run process {pid} outlived the pool")
