"""End to end through the command line: synth -> train -> resume -> eval -> predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hdetr.cli import main
from hdetr.engine.evaluate import COCO_METRIC_KEYS
from support.engine_helpers import TINY_MODEL, assert_keeps_foreign_files, load_state


@pytest.fixture(scope="module")
def workspace(module_dir):
    root = module_dir("cli")
    assert main(["synth", str(root / "data"), "--train", "8", "--val", "4", "--size", "64"]) == 0
    return root


@pytest.fixture(scope="module")
def trained(workspace):
    """One full epoch (4 steps, evaluated at its end), then resumed for 2 more steps."""
    run = workspace / "run"
    base = ["train", "synthetic_small", *TINY_MODEL, f"data.train={workspace / 'data'}", "train.epochs=2",
            "--out", str(run), "--no-progress"]
    assert main([*base, "train.max_iters=4"]) == 0
    after_first = load_state(run / "last.pt")
    assert main([*base, "train.max_iters=6", "--resume"]) == 0
    return run, after_first


def test_synth_writes_roboflow_layout(workspace):
    for split, n in (("train", 8), ("valid", 4)):
        doc = json.loads((workspace / "data" / split / "_annotations.coco.json").read_text())
        assert len(doc["images"]) == n
        assert all((workspace / "data" / split / im["file_name"]).exists() for im in doc["images"])


def test_run_folder(trained):
    run, after_first = trained
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "model/model.safetensors",
                 "model/config.yaml", "report/report.md", "report/pr_curves.png", "report/confusion_matrix.png"):
        assert (run / name).exists(), name
    assert after_first["step"] == 4 and after_first["epoch"] == 1  # the epoch finished
    last = load_state(run / "last.pt")
    assert (last["step"], last["epoch"], last["step_in_epoch"]) == (6, 1, 2)
    assert last["category_map"]["names"] == ["circle", "square", "triangle", "cross"]
    assert last["class_names"] == ["circle", "square", "triangle", "cross"]
    best = load_state(run / "best.pt")
    assert set(COCO_METRIC_KEYS) <= set(best["metrics"])


def test_metrics_jsonl_records(trained):
    run, _ = trained
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "losses" in r]
    eval_recs = [r for r in records if "eval" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    for r in train_recs:
        assert {"epoch", "iter", "step", "lr", "losses", "time"} <= set(r)
        # The full loss dict: every decoder layer, the encoder proposals and the one-to-many group.
        assert {"loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_ce_enc", "loss_ce_one2many"} <= set(r["losses"])
    assert len(eval_recs) == 1 and eval_recs[0]["epoch"] == 0
    assert set(COCO_METRIC_KEYS) <= set(eval_recs[0]["eval"])


def test_eval_verb_writes_metrics_json(trained, workspace, capsys):
    run, _ = trained
    out = workspace / "metrics.json"
    for checkpoint in (run / "model", run / "last.pt", run / "best.pt"):
        assert main(["eval", str(checkpoint), str(workspace / "data"), "--out", str(out), "--workers", "0",
                     "--no-progress"]) == 0
        metrics = json.loads(out.read_text())
        assert list(metrics) == list(COCO_METRIC_KEYS)
        assert all(-1 <= v <= 1 for v in metrics.values())
    printed = capsys.readouterr().out
    assert "AP50" in printed and "IoU=0.50:0.95" in printed


def test_eval_out_folder_writes_the_report(trained, workspace, capsys):
    run, _ = trained
    out = workspace / "eval_report"
    assert main(["eval", str(run / "model"), str(workspace / "data"), "--out", str(out), "--workers", "0",
                 "--no-progress", "--conf", "0.0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"] == metrics and list(metrics) == list(COCO_METRIC_KEYS)
    assert [r["name"] for r in report["per_class"]] == ["circle", "square", "triangle", "cross"]
    # Every ground-truth object lands in one row of the confusion matrix.
    gt = json.loads((workspace / "data" / "valid" / "_annotations.coco.json").read_text())
    assert sum(map(sum, report["confusion_matrix"]["counts"][:4])) == len(gt["annotations"])
    for name in ("per_class.csv", "pr_curves.png", "confusion_matrix.png", "gallery_false.png", "report.md"):
        assert (out / name).exists(), name
    assert "report.md" in capsys.readouterr().out
    # The end of training wrote the same report for its best model.
    assert json.loads((run / "report" / "report.json").read_text())["metrics"] == pytest.approx(
        load_state(run / "best.pt")["metrics"])


def test_eval_tiled(trained, workspace):
    """Tiles as large as the image and no whole-image pass: the plain evaluation's numbers."""
    run, _ = trained
    plain, tiled = workspace / "plain.json", workspace / "tiled.json"
    common = ["eval", str(run / "model"), str(workspace / "data"), "--workers", "0", "--no-progress"]
    assert main([*common, "--out", str(plain)]) == 0
    assert main([*common, "--out", str(tiled), "--tile", "64", "--no-full-image"]) == 0
    assert json.loads(tiled.read_text()) == pytest.approx(json.loads(plain.read_text()), abs=1e-6)
    assert main([*common, "--out", str(workspace / "tiled32.json"), "--tile", "32"]) == 0
    assert json.loads((workspace / "tiled32.json").read_text()) != json.loads(plain.read_text())


def test_eval_of_best_pt_reproduces_training_metrics(trained, workspace):
    run, _ = trained
    out = workspace / "best_metrics.json"
    assert main(["eval", str(run / "best.pt"), str(workspace / "data"), "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    best = load_state(run / "best.pt")
    assert json.loads(out.read_text()) == pytest.approx(best["metrics"])


def test_predict_verb_outputs(trained, workspace):
    run, _ = trained
    out = workspace / "pred"
    images = sorted((workspace / "data" / "valid").glob("*.jpg"))
    # A file and a folder holding it again: both are processed, drawings do not overwrite each other.
    assert main(["predict", str(run / "model"), str(images[0]), str(workspace / "data" / "valid"),
                 "--threshold", "0.0", "--out", str(out)]) == 0
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == set(range(1, len(images) + 2))
    for d in dets:
        assert set(d) == {"image_id", "file_name", "category_id", "category_name", "bbox", "score"}
        assert d["category_id"] in (1, 2, 3, 4)
        assert d["category_name"] in ("circle", "square", "triangle", "cross")
        x, y, w, h = d["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= 64.001 and y + h <= 64.001
        assert 0 <= d["score"] <= 1
    drawn = sorted(p.name for p in out.glob("*.jpg"))
    assert len(drawn) == len(images) + 1
    with Image.open(out / images[1].name) as im, Image.open(images[1]) as orig:
        assert im.size == orig.size  # drawings keep the input's size (--draw-min-side enlarges)


def test_predict_threshold_filters(trained, workspace):
    run, _ = trained
    image = sorted((workspace / "data" / "valid").glob("*.jpg"))[0]
    main(["predict", str(run / "model"), str(image), "--threshold", "0.0", "--out", str(workspace / "p0")])
    main(["predict", str(run / "model"), str(image), "--threshold", "1.0", "--out", str(workspace / "p1")])
    all_dets = json.loads((workspace / "p0" / "detections.json").read_text())
    none = json.loads((workspace / "p1" / "detections.json").read_text())
    assert len(all_dets) == 20 and none == []  # topk 20 at threshold 0; nothing scores 1.0


def test_user_errors_exit_2(workspace, capsys):
    assert main(["eval", str(workspace / "missing"), str(workspace / "data")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["train", "synthetic_small", "train.nonsense=1", "--out", str(workspace / "x")]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_demo_scores_its_model_with_evals_function(workspace, tmp_path, monkeypatch):
    import shutil

    import torch

    import hdetr.engine.model_evaluation as model_evaluation

    calls = []
    real = model_evaluation.evaluate_model
    monkeypatch.setattr(model_evaluation, "evaluate_model",
                        lambda *a, **kw: calls.append(a) or real(*a, **kw))
    out = tmp_path / "demo"
    shutil.copytree(workspace / "data", out / "data")  # the demo reuses a dataset it finds there
    threads = torch.get_num_threads()
    try:
        assert main(["demo", "--out", str(out), "--from-scratch", *TINY_MODEL, "train.max_iters=1", "train.epochs=1",
                     "--device", "cpu", "--threads", "1", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert [Path(a[0]) for a in calls] == [out / "run" / "model"]
    assert list(json.loads((out / "metrics.json").read_text())) == list(COCO_METRIC_KEYS)
    assert (out / "predictions.png").exists()


def test_demo_keeps_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    # Refused before anything is trained (no dataset is written either).
    assert_keeps_foreign_files(["demo", "--out", str(out), "--no-progress"], out,
                               (("metrics.json", b'{"mine": 1}'), ("predictions.png", b"mine")), capsys)
    assert sorted(p.name for p in out.iterdir()) == []


def test_demo_refuses_a_bad_override_before_writing_or_deleting_anything(tmp_path, capsys):
    from hdetr.cli import main

    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    (out / "run" / "train.log").write_text("the previous demo run\n")
    for bad in ("model.backbone=tiny", "train.no_such_key=1"):
        assert main(["demo", "--out", str(out), "--no-progress", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and bad.split("=")[0] in err
    assert sorted(p.name for p in out.iterdir()) == ["run"]  # no dataset written
    assert (out / "run" / "train.log").read_text() == "the previous demo run\n"


def test_eval_refuses_a_model_with_another_class_count(trained, workspace, monkeypatch, capsys):
    # A checkpoint without a category map (an official one) is checked by its class count alone.
    from dataclasses import replace

    import hdetr.engine.model_evaluation as model_evaluation
    from hdetr.weights import load_weights

    run, _ = trained
    loaded = load_weights(run / "model")
    other = replace(loaded, category_map=None, cfg=replace(loaded.cfg, model=replace(loaded.cfg.model, num_classes=7)))
    monkeypatch.setattr(model_evaluation, "load_weights", lambda path: other)
    assert main(["eval", str(run / "model"), str(workspace / "data"), "--workers", "0", "--no-progress"]) == 2
    assert "predicts 7 classes but" in capsys.readouterr().err


def test_eval_out_folder_keeps_files_hdetr_did_not_write(trained, workspace, capsys):
    run, _ = trained
    out = workspace / "eval_into_user_folder"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    command = ["eval", str(run / "model"), str(workspace / "data"), "--out", str(out), "--workers", "0",
               "--no-progress"]
    # A file under one of the report's names: refused (named), before the evaluation runs.
    assert_keeps_foreign_files(command, out, (("report.md", b"my report"), ("metrics.json", b'{"mine": 1}'),
                                              ("pr_curves.png", b"mine")), capsys)
    # The report goes beside the user's other files, and replaces its own report the next time.
    assert main(command) == 0
    assert main(command) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "report.md").read_text().startswith("# Evaluation report")


def test_train_small_data_takes_its_settings_from_the_data_and_resumes_with_them(workspace, capsys):
    run = workspace / "small_data_run"
    base = ["train", "small_data", f"data.train={workspace / 'data'}", "model.hidden_dim=32", "model.dim_feedforward=64",
            "train.epochs=2", "--out", str(run), "--no-progress"]
    assert main([*base, "train.max_iters=1"]) == 0
    out = capsys.readouterr().out
    assert "data chose model.num_queries=" in out and "data chose data.val_scale=" in out
    assert "data chose train.epochs" not in out  # the user's key
    saved = load_state(run / "last.pt")["config"]
    chosen = {line.split("=", 1)[0][len("data chose "):]: line.split("=", 1)[1].split(":", 1)[0]
              for line in out.splitlines() if line.startswith("data chose ")}
    assert str(saved["model"]["num_queries"]) == chosen["model.num_queries"]
    assert str(saved["data"]["val_scale"]) == chosen["data.val_scale"]
    assert saved["train"]["epochs"] == 2 and saved["train"]["lr_drop"] == 2  # 11/12 of the user's 2 epochs
    # --resume recomputes the same choices, so the run's settings match and it continues
    assert main([*base, "train.max_iters=2", "--resume"]) == 0
    assert load_state(run / "last.pt")["step"] == 2
    # --no-recipe keeps the preset's own values
    assert main([*base, "train.max_iters=1", "--no-recipe", "--out", str(workspace / "plain")]) == 0
    assert load_state(workspace / "plain" / "last.pt")["config"]["model"]["num_queries"] == 100
