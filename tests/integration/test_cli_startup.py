"""The CLI answers --help and argument errors without importing torch; --threads sets torch's pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hdetr.cli import VERBS, main
from support.paths import REPO

HEAVY = ("torch", "torchvision", "numpy", "scipy", "PIL", "matplotlib")

# Runs hdetr's main() on argv in a fresh interpreter, then reports its exit status and which heavy
# modules ended up imported.
PROBE = """
import json, sys
from hdetr.cli import main
try:
    rc = main(json.loads(sys.argv[1]))
except SystemExit as e:
    rc = e.code
print(json.dumps({"rc": rc, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def probe(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["bench", "speed", "--help"]])
def test_help_does_not_import_torch(argv):
    result = probe(argv)
    assert result["rc"] == 0
    assert result["heavy"] == []


def heavy_after(code: str) -> str:
    """The heavy modules a fresh interpreter has imported after running ``code`` (as printed)."""
    code += "; import sys; print([m for m in %r if m in sys.modules])" % (HEAVY,)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_every_verb_help_is_torch_free():
    # One interpreter for all verbs: building the whole parser (every command module) must stay light.
    assert heavy_after("from hdetr.cli import build_parser; build_parser()") == "[]"
    assert set(VERBS) >= {"train", "eval", "predict", "bench", "convert", "demo"}


def test_listing_the_benchmarks_imports_none_of_them():
    # `hdetr bench --help` reads the benchmarks' docstrings from their sources; choosing one imports it alone.
    assert heavy_after("from benchmarks.__main__ import build_parser; build_parser(['--help'])") == "[]"
    others = heavy_after("from benchmarks.__main__ import SUBCOMMANDS, build_parser; import sys; build_parser(['speed']); "
                         "print([m for m in SUBCOMMANDS.values() if 'benchmarks.' + m in sys.modules])")
    assert others.splitlines()[0] == "['speed']"


@pytest.mark.slow
def test_bench_hands_its_arguments_and_help_to_the_benchmark_tooling(capfd):
    # `hdetr bench` is a thin entry point: the benchmarks' own parser answers, from this clone.
    assert main(["bench", "speed", "--help"]) == 0
    out = capfd.readouterr().out
    assert "usage: hdetr bench speed" in out and "--official" in out
    assert main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert "usage: hdetr bench" in out and "compare" in out and "ablation" in out
    assert main(["bench", "no-such-benchmark"]) == 2
    assert "invalid choice: 'no-such-benchmark'" in capfd.readouterr().err


def test_bench_outside_a_clone_says_what_it_needs(tmp_path, monkeypatch):
    from hdetr.commands import bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "__file__", str(tmp_path / "site-packages" / "hdetr" / "commands" / "bench.py"))
    assert bench.find_tooling() is None
    assert main(["bench", "speed"]) == 2


def test_foundation_modules_are_torch_free():
    # Writing a file atomically, the run folder's names, the backbone registry and the config must not
    # cost a torch import: the commands' parsers and config validation use them.
    assert heavy_after("import hdetr.files, hdetr.run_folder, hdetr.backbones, hdetr.config") == "[]"


@pytest.mark.parametrize("argv, message", [
    (["train"], "the following arguments are required: config"),
    (["train", "synthetic_small", "--threads", "0"], "--threads: must be >= 1, got 0"),
    (["eval", "m", "d", "--threads", "two"], "--threads: expected a whole number, got 'two'"),
    (["predict", "m", "img.jpg", "--threads", "-1"], "--threads: must be >= 1, got -1"),
])
def test_argument_errors_answer_without_torch(argv, message):
    result = probe(argv)
    assert result["rc"] == 2
    assert message in result["stderr"]
    assert result["heavy"] == []


@pytest.fixture
def restore_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_train_threads_sets_torch_intra_op_threads(monkeypatch, tmp_path, restore_threads):
    import torch

    import hdetr.engine.train as engine_train

    seen = []

    class Stop(BaseException):  # the CLI turns any Exception into one line (exit 70)
        pass

    def fake_train(cfg, out, **kw):
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(engine_train, "train", fake_train)
    torch.set_num_threads(1)
    with pytest.raises(Stop):
        main(["train", "synthetic_small", "--out", str(tmp_path / "run"), "--threads", "3"])
    # Without --threads torch's own setting is left alone.
    with pytest.raises(Stop):
        main(["train", "synthetic_small", "--out", str(tmp_path / "run")])
    assert seen == [3, 3]


def test_eval_threads_sets_torch_intra_op_threads(monkeypatch, tmp_path, restore_threads):
    import torch

    import hdetr.engine.model_evaluation as weights  # where `hdetr eval` takes load_weights from

    seen = {}

    class Stop(BaseException):  # the CLI turns any Exception into one line (exit 70)
        pass

    def fake_load(path):
        seen["threads"] = torch.get_num_threads()
        raise Stop

    monkeypatch.setattr(weights, "load_weights", fake_load)
    torch.set_num_threads(1)
    with pytest.raises(Stop):
        main(["eval", str(tmp_path), str(tmp_path), "--threads", "2"])
    assert seen["threads"] == 2


def test_predict_threads_sets_torch_intra_op_threads(monkeypatch, tmp_path, restore_threads):
    import torch

    import hdetr.api as api

    seen = {}

    class Stop(BaseException):  # the CLI turns any Exception into one line (exit 70)
        pass

    def fake_from_checkpoint(path, device="cpu"):
        seen["threads"] = torch.get_num_threads()
        raise Stop

    monkeypatch.setattr(api.Detector, "from_checkpoint", staticmethod(fake_from_checkpoint))
    (tmp_path / "a.jpg").write_bytes(b"")
    torch.set_num_threads(1)
    with pytest.raises(Stop):
        main(["predict", str(tmp_path / "model"), str(tmp_path / "a.jpg"), "--threads", "2"])
    assert seen["threads"] == 2


def test_export_opset_help_names_the_exporters_default():
    # The export verb states the default without importing the exporter (which imports torch).
    from hdetr.cli import build_parser
    from hdetr.export import DEFAULT_OPSET

    parser = build_parser()
    export = parser._subparsers._group_actions[0].choices["export"]
    opset = next(a for a in export._actions if "--opset" in a.option_strings)
    assert f"default: {DEFAULT_OPSET}," in opset.help


def test_openmp_threads_wait_passively_on_a_busy_machine_unless_the_user_chose(monkeypatch):
    """OMP_WAIT_POLICY=PASSIVE when the busy cores plus our threads exceed the cores (spinning threads
    double a step's CPU time on a shared machine), the default on an idle machine, and a policy the user
    set is kept."""
    import hdetr.threads as threads_module

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    for busy, threads, expected in ((0.1, None, None), (0.1, 2, None), (3.0, None, "PASSIVE"),
                                    (2.0, 2, None), (2.9, 2, "PASSIVE")):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        monkeypatch.setattr(threads_module, "busy_cores", lambda busy=busy: busy)
        threads_module.prefer_passive_waiting(threads)
        assert os.environ.get("OMP_WAIT_POLICY") == expected, (busy, threads)
    threads_module.prefer_passive_waiting(None)  # already PASSIVE from the last case: left as it is
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(threads_module, "busy_cores", lambda: 9.0)
    threads_module.prefer_passive_waiting(None)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_busy_cores_are_measured_now_not_a_minute_ago(monkeypatch):
    # /proc/stat over the window: 3 of 4 cores' ticks busy -> 3.0, whatever the 1-minute load average says.
    import hdetr.threads as threads_module

    samples = iter([(1000, 600), (1400, 700)])
    monkeypatch.setattr(threads_module, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads_module.busy_cores(window=0) == pytest.approx(3.0)
    # No /proc/stat (macOS): the load average; neither (Windows): unknown.
    monkeypatch.setattr(threads_module, "_cpu_times", lambda: None)
    assert threads_module.busy_cores(window=0) == 0.0
    monkeypatch.setattr(os, "getloadavg", lambda: (_ for _ in ()).throw(OSError("no load average")))
    assert threads_module.busy_cores(window=0) is None
    # The real file parses on this machine (Linux CI): a number of cores between 0 and all.
    monkeypatch.undo()
    if os.path.exists("/proc/stat"):
        assert 0.0 <= threads_module.busy_cores(window=0.05) <= os.cpu_count()


def test_the_cli_chooses_the_wait_policy_after_parsing(monkeypatch, tmp_path):
    import hdetr.threads as threads_module

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(threads_module, "busy_cores", lambda: 50.0)
    assert main(["check-data", str(tmp_path / "no_such_dataset")]) == 2
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"
