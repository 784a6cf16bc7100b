"""`hdetr bench speed` end to end on a tiny image (the full-size run takes minutes)."""

from __future__ import annotations

import pytest
import json

from benchmarks.__main__ import main

pytestmark = pytest.mark.slow


def test_bench_speed_tiny(tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = main(["speed", "--quick", "--impl", "both", "--image-size", "288", "352", "--threads", "1",
               "--only", "attention", "eval", "matcher", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["machine"]["torch_threads"] == 1 and report["machine"]["cpu"]
    for impl in ("fast", "reference"):
        for key in ("eval.forward", "matcher.hybrid_step", "attention.forward", "attention.backward"):
            assert report["results"][impl][key]["median_s"] > 0
    assert report["checks"]["attention.out_max_abs_diff"] < 1e-4
    assert report["targets"] is None  # targets only apply to the full-size run
    assert "speed-up" in capsys.readouterr().out


def test_bench_has_subcommands():
    from benchmarks.__main__ import SUBCOMMANDS

    assert {"speed", "ablation", "compare"} <= set(SUBCOMMANDS)


def test_bench_speed_training_steps_are_paired(tmp_path):
    out = tmp_path / "speed.json"
    rc = main(["speed", "--quick", "--impl", "fast", "--image-size", "288", "352", "--threads", "1",
               "--repeats", "2", "--only", "hybrid", "baseline", "--out", str(out)])
    assert rc == 0
    fast = json.loads(out.read_text())["results"]["fast"]
    for tag in ("hybrid", "baseline"):
        step = fast[f"{tag}.train_step"]["wall_s"]
        parts = [fast[f"{tag}.{p}"]["wall_s"] for p in ("forward", "loss", "backward")]
        assert len(step) == 2 and all(abs(s - sum(p)) < 1e-9 for s, p in zip(step, zip(*parts)))
    overhead = fast["hybrid_overhead"]
    assert overhead["paired"] == [h / b - 1 for h, b in zip(fast["hybrid.train_step"]["wall_s"],
                                                         fast["baseline.train_step"]["wall_s"])]


def test_interleaved_schedule_alternates_order():
    from benchmarks.timing import schedule_pairs

    pairs = [("hybrid", "fast"), ("baseline", "fast")]
    sched = schedule_pairs(pairs, repeats=3, warmup=1)
    assert [r for r, _ in sched] == [None, 0, 1, 2]
    assert [order[0][0] for _, order in sched] == ["hybrid", "baseline", "hybrid", "baseline"]
    assert all(sorted(order) == sorted(pairs) for _, order in sched)
