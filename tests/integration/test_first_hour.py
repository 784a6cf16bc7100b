"""A new user's first runs through the CLI, on a 2-class dataset with the CPU preset: the top-k adapts
with a note, every file written is readable by others (umask 022 -> 0644), eval prints the per-class
table and the best threshold and saves its detections as COCO results, predict --threshold best uses the
threshold training stored, and a folder with an unreadable image gets results for the others."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hdetr.cli import main
from support.engine_helpers import TINY_MODEL

pytestmark = pytest.mark.slow  # a training run first (about a minute)


def two_classes(data: Path) -> None:
    """Keep the first two categories of the synthetic data (and their objects) in both splits."""
    for split in ("train", "valid"):
        ann = data / split / "_annotations.coco.json"
        doc = json.loads(ann.read_text())
        doc["categories"] = doc["categories"][:2]
        keep = {c["id"] for c in doc["categories"]}
        doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] in keep]
        ann.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.fixture(scope="module")
def workspace(module_dir, umask_022):
    root = module_dir("first_hour")
    assert main(["synth", str(root / "data"), "--train", "8", "--val", "4", "--size", "64"]) == 0
    two_classes(root / "data")
    return root


@pytest.fixture(scope="module")
def trained(workspace, capsys_module):
    run = workspace / "run"
    # synthetic_small with the tiny model: 10 queries; topk 40 fits the preset's 4 classes, not the data's 2.
    assert main(["train", "synthetic_small", *TINY_MODEL, "model.topk=40", f"data.train={workspace / 'data'}",
                 "train.epochs=1", "--out", str(run), "--no-progress"]) == 0
    return run, capsys_module.readouterr().out


@pytest.fixture(scope="module")
def capsys_module():
    """The output of the module's fixtures (pytest's capsys is per test)."""
    import io
    from contextlib import redirect_stdout

    class Capture:
        def __init__(self):
            self.buffer = io.StringIO()
            self.ctx = redirect_stdout(self.buffer)

        def readouterr(self):
            class Out:
                out = self.buffer.getvalue()
            return Out

    cap = Capture()
    with cap.ctx:
        yield cap


def assert_readable_by_others(folder: Path) -> list[str]:
    """Every file 0644 and every folder 0755 (umask 022); returns the files' names relative to folder."""
    files = []
    for path in sorted(folder.rglob("*")):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: mode {oct(mode)}"
        if path.is_file():
            files.append(str(path.relative_to(folder)))
    return files


def test_a_two_class_dataset_trains_with_the_cpu_preset_and_a_topk_note(trained):
    run, printed = trained
    assert "note: model.topk 40 -> 20: the post-processing keeps the top-k of model.num_queries x " \
           "model.num_classes = 10 x 2" in printed
    saved = yaml.safe_load((run / "model" / "config.yaml").read_text())["model"]
    assert (saved["num_classes"], saved["topk"]) == (2, 20)
    assert "stored with the model, use predict --threshold best" in printed


def test_every_file_of_the_run_and_model_folders_is_readable_by_others(trained):
    run, _ = trained
    files = assert_readable_by_others(run)
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "model/model.safetensors",
                 "model/config.yaml", "model/threshold.json", "report/report.md", "report/detections.json",
                 "report/threshold_curves.png", "report/metrics.json"):
        assert name in files, name


def test_check_data_reports_the_queries_and_topk_of_the_config_given(workspace, capsys):
    assert main(["check-data", str(workspace / "data"), "--config", "synthetic_small"]) == 0
    out = capsys.readouterr().out
    assert "model (synthetic_small): 30 one-to-one queries, 2 classes, topk 60 (model.topk 100 -> 60" in out
    report = workspace / "check.json"
    assert main(["check-data", str(workspace / "data"), "--config", "synthetic_small", "model.num_queries=5",
                 "--json", str(report)]) == 0
    assert "5 one-to-one queries, 2 classes, topk 10 (model.topk 100 -> 10" in capsys.readouterr().out
    model = json.loads(report.read_text())["model"]
    assert (model["config"], model["num_queries"], model["num_classes"], model["topk"]) == ("synthetic_small", 5, 2, 10)


def test_eval_prints_the_table_and_threshold_and_saves_coco_results(trained, workspace, capsys):
    run, _ = trained
    out = workspace / "eval"
    assert main(["eval", str(run / "model"), str(workspace / "data"), "--out", str(out), "--workers", "0",
                 "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "best F1 @ thr" in printed and "best threshold 0." in printed
    names = [c["name"] for c in json.loads((workspace / "data" / "valid" / "_annotations.coco.json").read_text())["categories"]]
    table = printed[printed.index("best F1 @ thr"):]
    assert all(n in table for n in names)
    report = json.loads((out / "report.json").read_text())
    assert f"best threshold {report['threshold']['threshold']:.2f}" in printed
    # The saved detections are COCO results: the evaluator reads them back to the same AP.
    from faster_coco_eval import COCO

    from hdetr.engine.evaluate import coco_metrics

    gt = COCO(str(workspace / "data" / "valid" / "_annotations.coco.json"))
    dets = json.loads((out / "detections.json").read_text())
    assert dets and set(dets[0]) == {"image_id", "category_id", "bbox", "score"}
    assert gt.loadRes(str(out / "detections.json")).getAnnIds()
    assert coco_metrics(gt, dets)["AP"] == pytest.approx(report["metrics"]["AP"])
    assert Image.open(out / "threshold_curves.png").size[0] > 0
    assert "threshold_curves.png" in assert_readable_by_others(out)


def test_predict_threshold_best_and_a_corrupt_image_in_the_folder(trained, workspace, capsys):
    run, _ = trained
    images = workspace / "images"
    images.mkdir()
    for p in sorted((workspace / "data" / "valid").glob("*.jpg"))[:3]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "0_corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = workspace / "pred"
    code = main(["predict", str(run / "model"), str(images), "--out", str(out), "--threshold", "best",
                 "--no-progress"])
    printed = capsys.readouterr().out
    stored = json.loads((run / "model" / "threshold.json").read_text())["threshold"]
    assert code == 1  # at the end, after the others were written
    assert f"--threshold best: {stored:.2f}" in printed
    named = [line for line in printed.splitlines() if "0_corrupt.jpg" in line]
    assert len(named) == 2 and "cannot read the image" in named[0]  # where it happened, and in the summary
    assert named[1].startswith("1 of 4 image(s) could not be read: ")
    lines = [json.loads(l) for l in (out / "detections.jsonl").read_text().splitlines()]
    assert [Path(l["file_name"]).name for l in lines] == sorted(p.name for p in images.iterdir())
    assert "error" in lines[0] and all("detections" in l for l in lines[1:])
    assert all(d["score"] >= stored for l in lines[1:] for d in l["detections"])
    results = json.loads((out / "detections.json").read_text())
    assert results == [d for l in lines[1:] for d in l["detections"]]
    for p in sorted(images.glob("[!0]*.jpg")):
        with Image.open(out / p.name) as drawn:
            assert drawn.size == (64, 64)  # the input's size
    assert not (out / "0_corrupt.jpg").exists()
    assert sorted(assert_readable_by_others(out)) == sorted(["detections.json", "detections.jsonl",
                                                             *(p.name for p in images.glob("[!0]*.jpg"))])
    # Asked otherwise: enlarged by a whole factor.
    assert main(["predict", str(run / "model"), str(images / lines[1]["file_name"].split("/")[-1]), "--out",
                 str(workspace / "big"), "--draw-min-side", "200", "--no-progress"]) == 0
    with Image.open(workspace / "big" / Path(lines[1]["file_name"]).name) as drawn:
        assert drawn.size == (256, 256)


@pytest.mark.parametrize("argv, message", [
    (["--threshold", "bset"], "expected a number in [0, 1] or 'best', got 'bset'"),
    (["--threshold", "1.5"], "--threshold must be in [0, 1] or 'best', got 1.5"),
    (["--providers", "cuda"], "--providers is for the onnxruntime backend"),
    (["--draw-min-side", "-1"], "--draw-min-side must be >= 0, got -1"),
    (["--device", "gpu"], "--device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_predict_refuses_bad_options_in_one_line(trained, workspace, capsys, argv, message):
    run, _ = trained
    image = sorted((workspace / "data" / "valid").glob("*.jpg"))[0]
    try:
        code = main(["predict", str(run / "model"), str(image), "--out", str(workspace / "bad"), *argv])
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # argparse prints its usage above
    assert code == 2 and message in last and last.startswith("hdetr predict: ")


def test_threshold_best_without_a_stored_threshold(trained, workspace, capsys):
    run, _ = trained
    image = sorted((workspace / "data" / "valid").glob("*.jpg"))[0]
    assert main(["predict", str(run / "last.pt"), str(image), "--out", str(workspace / "nobest"),
                 "--threshold", "best"]) == 2
    err = capsys.readouterr().err.strip()
    assert "last.pt has no stored best threshold" in err and len(err.splitlines()) == 1


def test_check_data_and_serve_refuse_typos_in_one_line(trained, workspace, capsys):
    run, _ = trained
    assert main(["check-data", str(workspace / "data"), "--config", "synthetic_small", "model.num_quries=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key 'model.num_quries'" in err and len(err.splitlines()) == 1
    pytest.importorskip("fastapi")
    assert main(["serve", str(run / "model"), "--providers", "cuda", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--providers is for the onnxruntime backend" in err and len(err.splitlines()) == 1
