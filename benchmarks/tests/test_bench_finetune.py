"""hdetr bench finetune --quick end to end (a few steps, in this process), the target dataset, and
hdetr bench backbones --quick."""

from __future__ import annotations

import hashlib
import json

import pytest

from benchmarks import finetune
from benchmarks.__main__ import build_parser, main
from hdetr.data.synthetic import CATEGORIES as SOURCE_CATEGORIES
from benchmarks.synthetic_target import CATEGORIES, write_target_dataset


def _digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_target_dataset_is_deterministic_with_other_classes(tmp_path):
    a = write_target_dataset(tmp_path / "a", 3, 2, 96, seed=0)
    write_target_dataset(tmp_path / "b", 3, 2, 96, seed=0)
    write_target_dataset(tmp_path / "c", 3, 2, 96, seed=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    names = {c["name"] for c in CATEGORIES}
    assert not names & {c["name"] for c in SOURCE_CATEGORIES}
    doc = json.loads((tmp_path / "a" / "train" / "_annotations.coco.json").read_text())
    assert a["train"]["num_annotations"] == len(doc["annotations"]) > 0
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96 and w > 0 and h > 0 and ann["area"] > 0


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "ft.json"
    argv = ["finetune", "--quick", "--work", str(tmp_path / "work"), "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    arms = list(finetune.ARMS) if finetune.lite0_available() else [a for a in finetune.ARMS if a != "imagenet_lite0"]
    assert set(doc) >= {"budget", "machine", "source", "arms", "runs", "train_cpu_minutes_total"}
    assert list(doc["arms"]) == arms
    b = finetune.QUICK
    steps = [b.steps_per_epoch * (e + 1) for e in range(b.target_epochs)]
    for arm, t in doc["arms"].items():
        assert t["seeds"] == list(b.seeds)
        assert [r["step"] for r in t["curve"]] == steps, arm
        for row in t["curve"]:
            assert 0.0 <= row["AP_mean"] <= 1.0 and row["AP_std"] >= 0 and len(row["AP"]) == len(b.seeds)
    assert doc["source"]["steps"] == b.source_epochs * -(-b.source_train // b.batch_size)
    assert len(doc["runs"]) == len(arms) * len(b.seeds)
    # what each start took from the source detector (train.init_from's report)
    work = tmp_path / "work" / "quick"
    full = json.loads(next(work.glob("init_from-s0-*/init_report.json")).read_text())
    assert full["classes"]["new"] == ["star", "ring", "hexagon"] and full["classes"]["kept"] == []
    assert full["counts"]["reinitialised"] == 0 and any(k.startswith("transformer.") for k in full["loaded"])
    backbone = json.loads(next(work.glob("source_backbone-s0-*/init_report.json")).read_text())
    assert backbone["loaded"] and all(k.startswith("backbone.") for k in backbone["loaded"])
    assert not list(work.glob("scratch-s0-*/init_report.json"))
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| start |" in out.with_suffix(".md").read_text()
    first = capsys.readouterr().out
    assert "source detector (init_from)" in first and "from scratch" in first

    # again: every run is found and skipped, the numbers stay
    assert main(argv) == 0
    assert json.loads(out.read_text())["arms"] == doc["arms"]
    assert "already done, 0 to train" in capsys.readouterr().out


def test_backbones_speed_quick(tmp_path, capsys):
    from benchmarks import backbones

    out = tmp_path / "bb.json"
    args = build_parser().parse_args(["backbones", "--quick", "--batch", "1", "--size", "96", "--out", str(out)])
    assert backbones.run(args) == 0
    doc = json.loads(out.read_text())
    assert set(doc["backbones"]) == {"tiny", "efficientnet_lite0"}
    assert doc["backbones"]["tiny"]["ratio_to_tiny"] == pytest.approx(1.0) == doc["backbones"]["tiny"]["cpu_ratio_to_tiny"]
    for s in doc["backbones"].values():
        assert s["train_step_wall_s"] > 0 and s["backbone_params"] > s["backbone_trainable_params"] * 0.5
    assert "x tiny" in capsys.readouterr().out
