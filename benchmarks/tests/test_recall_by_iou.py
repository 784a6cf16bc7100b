"""benchmarks/recall_by_iou.py: recall at IoU thresholds on boxes whose overlaps are known by construction."""

from __future__ import annotations

import json

import pytest

from benchmarks import recall_by_iou as rb


def _case():
    # Image 1: a 10x10 box found exactly, a 20x20 box covered by a 20x10 half (IoU 0.5), a 40x40 box
    # missed (its detection overlaps a quarter: IoU 0.25). Image 2: a 4x8 box with no detection, and a
    # crowd box that does not count. Image 3 has only a detection.
    anns = {"images": [{"id": i} for i in (1, 2, 3)], "annotations": [
        {"id": 1, "image_id": 1, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "bbox": [100, 100, 20, 20]},
        {"id": 3, "image_id": 1, "bbox": [200, 200, 40, 40]},
        {"id": 4, "image_id": 2, "bbox": [0, 0, 4, 8]},
        {"id": 5, "image_id": 2, "bbox": [50, 50, 30, 30], "iscrowd": 1}]}
    dets = [{"image_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "bbox": [100, 100, 20, 10], "score": 0.1},
            {"image_id": 1, "bbox": [200, 200, 20, 20], "score": 0.5},
            {"image_id": 3, "bbox": [0, 0, 5, 5], "score": 0.7}]
    return dets, anns


def test_recall_counts_every_detection_at_each_threshold():
    dets, anns = _case()
    r = rb.recall_by_iou(dets, anns)
    assert r["boxes"] == 4
    assert r["recall"] == {"0.1": 0.75, "0.3": 0.5, "0.5": 0.5, "0.7": 0.25}
    assert r["median_side_found"] == 15.0 and r["median_side_missed"] == 22.0  # (10, 20) and (4, 40)


def test_command_prints_writes_json_and_names_bad_files(tmp_path, capsys):
    dets, anns = _case()
    (tmp_path / "d.json").write_text(json.dumps(dets))
    (tmp_path / "a.json").write_text(json.dumps({**anns, "categories": [{"id": 1, "name": "x"}]}))
    out = tmp_path / "r.json"
    assert rb.main([str(tmp_path / "d.json"), str(tmp_path / "a.json"), "--json", str(out)]) == 0
    assert "0.1: 0.750, 0.3: 0.500, 0.5: 0.500, 0.7: 0.250" in capsys.readouterr().out
    assert json.loads(out.read_text())["recall"]["0.5"] == 0.5
    assert rb.main([str(tmp_path / "missing.json"), str(tmp_path / "a.json")]) == 2
    assert "missing.json: cannot read it" in capsys.readouterr().err
    assert rb.main([str(tmp_path / "d.json"), str(tmp_path / "nowhere")]) == 2
    assert "dataset path does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["[{\"image_id\": 1}]", "{\"not\": \"a list\"}", "not json"])
def test_malformed_detections_are_one_line_errors(tmp_path, capsys, bad):
    _, anns = _case()
    (tmp_path / "d.json").write_text(bad)
    (tmp_path / "a.json").write_text(json.dumps(anns))
    assert rb.main([str(tmp_path / "d.json"), str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
