"""benchmarks/gpu_check.py without a GPU: the one-line refusal, and every part's CPU smoke path
(``--device cpu --small``), its JSON checked for structure and values; a failing part is recorded and
the others still run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check
from support.fake_official import write_fake_official

SCRIPT = Path(gpu_check.__file__)


def _finite_positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.process
def test_without_cuda_it_refuses_at_once_with_one_line(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], proc.stderr
    assert not out.exists()


def test_unknown_part_is_a_one_line_refusal(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--small", "--parts", "train,nonsense", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "nonsense" in err[0]


def test_a_part_past_its_time_limit_is_stopped_and_recorded(tmp_path):
    entry = gpu_check.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                1.0, tmp_path / "log", tmp_path / "result.json")
    assert entry["status"] == "timeout" and entry["seconds"] < 30
    assert "started" in entry["log_tail"] and "time limit of 1 s" in entry["error"]


def test_error_line_prefers_the_childs_own_error_over_called_process_error():
    log = ("[rank0]: hdetr.config.ConfigError: model.topk (100) exceeds 40\n"
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
           "subprocess.CalledProcessError: Command '[...]' returned non-zero exit status 1.\n")
    assert gpu_check.error_line(log) == "[rank0]: hdetr.config.ConfigError: model.topk (100) exceeds 40"
    assert gpu_check.error_line("hdetr export: error: model.onnx: not an hdetr file\n").endswith("not an hdetr file")


@pytest.mark.slow
@pytest.mark.process
def test_cpu_smoke_run_of_every_part(tmp_path, capsys):
    official = write_fake_official(tmp_path / "H-Deformable-DETR")
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--small", "--official", str(official), "--work", str(tmp_path / "work"),
                         "--out", str(out)])
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    failed = {n: (e["status"], e.get("error"), e.get("log_tail")) for n, e in parts.items() if e["status"] not in ("ok", "skipped")}
    assert rc == 0 and not failed, failed
    assert parts["official_build"]["status"] == "skipped"  # the compiled op is for CUDA only
    printed = capsys.readouterr().out
    for name in gpu_check.PARTS:
        assert f"\n{name}" in printed  # the table has a row per part

    env = parts["environment"]["result"]
    assert env["cuda_available"] is False and env["torch"] and env["packages"]["safetensors"] is True

    train = parts["train"]["result"]
    assert set(train["precisions"]) == {"fp32", "bf16", "fp16"}
    for amp, p in train["precisions"].items():
        assert p["amp_effective"] == "none"  # autocast is CUDA-only in hdetr: the CPU runs fp32, and says so
        assert all(_finite_positive(t) for t in p["step_s"]) and len(p["step_s"]) == 2
        assert math.isfinite(p["loss_first_step"]) and p["loss_first_step"] > 0 and p["peak_memory_bytes"] is None
        if amp != "fp32":
            # Same weights, batch and (on the CPU) arithmetic: the agreement figure must be 0 here.
            assert p["loss_rel_diff_vs_fp32"] == pytest.approx(0.0, abs=1e-6)
    assert train["profile_fp32_step_top_ops"] and train["profile_fp32_step_top_ops"][0]["self_ms"] > 0

    ev = parts["eval"]["result"]["precisions"]
    assert _finite_positive(ev["fp32"]["forward_s_median"]) and ev["bf16"]["scores_max_abs_diff_vs_fp32"] < 1e-6

    off = parts["official"]["result"]
    assert "pure PyTorch" in off["official_attention"]  # labelled: no compiled op on the CPU
    assert {"hybrid.train_step", "eval.forward"} <= set(off["ratios_hdetr_over_official"])
    assert all(_finite_positive(v) for v in off["medians_s"].values()) and len(off["medians_s"]) == 4

    ddp = parts["ddp"]["result"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1
    assert ddp["loss_rel_diff_vs_plain"] < 1e-6 and ddp["grad_norm_rel_diff_vs_plain"] < 1e-4
    assert all(_finite_positive(t) for t in ddp["step_s"])

    pred = parts["predict"]["result"]
    assert pred["images"] == 3 and pred["cli_detections"] >= 0 and _finite_positive(pred["detector_predict_s_median"])

    onnx = parts["onnx"]["result"]
    assert onnx["providers_used"][0] == "CPUExecutionProvider" and onnx["cuda_provider"] is False
    assert onnx["logits_max_abs_diff_vs_torch"] < 1e-3 and onnx["boxes_max_abs_diff_vs_torch"] < 1e-3
    assert _finite_positive(onnx["run_s_median"]) and onnx["onnx_bytes"] > 1e5

    demo = parts["demo"]["result"]
    assert 0.0 <= demo["AP"] <= 1.0 and _finite_positive(demo["demo_s"])


@pytest.mark.slow
@pytest.mark.process
def test_a_failing_part_is_recorded_and_the_next_ones_run(tmp_path):
    not_a_checkout = tmp_path / "not_official"
    not_a_checkout.mkdir()
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--small", "--parts", "environment,official,eval", "--official",
                         str(not_a_checkout), "--work", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 1
    parts = json.loads(out.read_text())["parts"]
    assert list(parts) == ["environment", "official", "eval"]
    failed = parts["official"]
    assert failed["status"] == "failed" and failed["returncode"] != 0
    assert "no main.py" in failed["error"] and str(not_a_checkout) in failed["error"]
    assert "no main.py" in failed["log_tail"]
    assert parts["environment"]["status"] == "ok"
    assert parts["eval"]["status"] == "ok" and _finite_positive(parts["eval"]["result"]["precisions"]["fp32"]["forward_s_median"])
