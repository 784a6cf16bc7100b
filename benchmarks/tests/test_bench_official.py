"""`hdetr bench speed --official PATH` on a fake official checkout (tests/support/fake_official.py): the runtime
shims, the arguments read from the checkout, the checks and the report. The real checkout is not needed."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks.official import _StubFinder
from benchmarks.__main__ import main
from support.fake_official import write_fake_official


@pytest.fixture
def fake_official(tmp_path):
    root = write_fake_official(tmp_path / "H-Deformable-DETR")
    before_modules, before_path = set(sys.modules), list(sys.path)
    yield root
    # The official packages (models, util, ...) and the stubs live in sys.modules: drop them again.
    for name in set(sys.modules) - before_modules:
        module = sys.modules[name]
        if str(getattr(module, "__file__", "") or "").startswith(str(root)) or type(module).__name__ == "_StubModule":
            del sys.modules[name]
    sys.path[:] = before_path
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _StubFinder)]


def test_side_by_side_with_fake_official(fake_official, tmp_path, capsys):
    out = tmp_path / "speed_official.json"
    rc = main(["speed", "--official", str(fake_official), "--quick", "--image-size", "288", "352",
               "--threads", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    official = report["official"]
    # The compiled op is missing: its pure-PyTorch function ran in its place (the stub would return None).
    assert "ms_deform_attn_core_pytorch" in official["attention"]
    assert {"MultiScaleDeformableAttention", "mmcv"} <= set(official["stubbed_modules"])
    assert sys.modules["models.ops.functions.ms_deform_attn_func"].CALLS
    checks = report["checks"]
    # The detection arguments come from the checkout's config scripts, parsed by its own parser.
    assert checks["hybrid.official_args"]["num_queries_one2many"] == 1500
    assert checks["hybrid.official_args"]["k_one2many"] == 6
    assert checks["baseline.official_args"]["num_queries_one2many"] == 0
    # A toy model: its weights do not convert, and the checks say so rather than pass silently.
    assert checks["hybrid.same_weights"] is False
    fake_params = sum(p.numel() for p in sys.modules["models.deformable_detr"].DeformableDETR(
        type("A", (), {"num_queries_one2one": 300, "num_queries_one2many": 1500})()).parameters())
    assert checks["hybrid.trainable_parameters"]["official"] == fake_params - 8 * 3  # its 1x1 body is replaced
    assert checks["hybrid.trainable_parameters"]["hdetr"] > 20_000_000
    # 8 boxes: the fake matches the final layer and one auxiliary layer (8 pairs each) and the
    # one-to-many group (8 x 6); hdetr's full model does 13 matchings.
    assert checks["hybrid.matched_pairs"]["official"] == 8 + 8 + 48
    assert checks["hybrid.matched_pairs"]["matchings_official"] == 3
    assert checks["hybrid.matched_pairs"]["matchings_hdetr"] == 13
    assert checks["hybrid.loss_terms"]["only_hdetr"]  # the toy criterion has no GIoU terms
    assert checks["eval.pred_logits_shape"] == {"official": [1, 300, 91], "hdetr": [1, 300, 91]}
    for impl in ("official", "fast"):
        for key in ("hybrid.train_step", "baseline.train_step", "eval.forward"):
            assert report["results"][impl][key]["median_s"] > 0
    ratios = report["ratios_hdetr_over_official"]
    assert set(ratios) == {"hybrid.train_step", "baseline.train_step", "eval.forward"}
    assert "ratio" in capsys.readouterr().out


def test_not_a_checkout_is_a_user_error(tmp_path, capsys):
    rc = main(["speed", "--official", str(tmp_path), "--quick", "--image-size", "288", "352",
               "--out", str(tmp_path / "x.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "main.py" in err and "H-Deformable-DETR" in err
    assert not (tmp_path / "x.json").exists()


def test_side_by_side_eval_only(fake_official, tmp_path):
    # --only eval: no training step is timed, and nothing compares training steps that did not run.
    out = tmp_path / "speed_eval.json"
    rc = main(["speed", "--official", str(fake_official), "--quick", "--only", "eval",
               "--image-size", "288", "352", "--threads", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["ratios_hdetr_over_official"]) == {"eval.forward"}
    assert not any(key.endswith(".loss_terms") for key in report["checks"])
