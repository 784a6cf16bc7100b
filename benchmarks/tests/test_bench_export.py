"""`hdetr bench export`: the options given to main([...]) reach the child process that measures."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from benchmarks.__main__ import main  # noqa: E402

# The smallest model the benchmark can export (one feature level, one decoder layer): the test is about
# the options reaching the measuring process, not the figures.
TINY = ["model.backbone=resnet18", "model.num_feature_levels=1", "model.enc_layers=1", "model.dec_layers=1",
        "model.dim_feedforward=32",
        "model.num_queries=10", "model.topk=10", "model.num_classes=3", "hybrid.scheme=none"]


@pytest.mark.process
@pytest.mark.slow
def test_bench_export_options_reach_the_measuring_process(tmp_path, capsys):
    out = tmp_path / "export.json"
    rc = main(["export", "--preset", "synthetic_small", "--sizes", "96x128", "--repeats", "2",
               "--warmup", "1", "--threads", "1", "--ort-levels", "basic", "--workdir", str(tmp_path / "work"),
               "--out", str(out), *TINY])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["sizes"] == [[96, 128]] and doc["repeats"] == 2 and doc["threads"] == 1
    assert doc["overrides"] == TINY
    assert [r["backend"] for r in doc["results"]] == ["pytorch-eager", "onnxruntime-basic"]
    assert all(len(r["times_s"]) == 2 for r in doc["results"])
    assert doc["machine"]["omp_wait_policy"] == "PASSIVE" and doc["machine"]["cpu"]
    assert doc["results"][1]["max_abs_logit_diff"] < 1e-3



@pytest.mark.process
def test_runner_hands_the_parsed_options_to_the_child(tmp_path, monkeypatch):
    """Fast companion of the test above: the child sees the options, not a re-parse of sys.argv."""
    import argparse
    import os
    from pathlib import Path

    from benchmarks.runner import run_in_child

    pkg = tmp_path / "echo_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "echo_bench.py").write_text(
        "import json, os\n"
        "def measure(args):\n"
        "    doc = {'args': vars(args), 'omp': os.environ.get('OMP_WAIT_POLICY')}\n"
        "    open(args.out, 'w').write(json.dumps(doc))\n"
        "    return 3\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr("sys.argv", ["hdetr", "bench", "export", "--repeats", "9"])  # must not reach the child
    out = tmp_path / "out.json"
    args = argparse.Namespace(sizes=[(96, 128)], repeats=2, out=Path(out), overrides=["a=1"], _bench_run=print)
    assert run_in_child("echo_pkg.echo_bench", args, {"OMP_WAIT_POLICY": "PASSIVE"}) == 3
    doc = json.loads(out.read_text())
    assert doc == {"args": {"sizes": [[96, 128]], "repeats": 2, "out": str(out), "overrides": ["a=1"]}, "omp": "PASSIVE"}
