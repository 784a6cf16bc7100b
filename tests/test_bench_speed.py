"""`hdetr bench speed` end to end on a tiny image (the full-size run takes minutes)."""

from __future__ import annotations

import json

from hdetr.cli import main


def test_bench_speed_tiny(tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = main(["bench", "speed", "--quick", "--impl", "both", "--image-size", "288", "352", "--threads", "1",
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
    from hdetr.commands.bench import SUBCOMMANDS

    assert "speed" in SUBCOMMANDS
