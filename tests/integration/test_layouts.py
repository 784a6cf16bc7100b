"""Every dataset layout gives what the equivalent COCO JSON gives: the same boxes and classes, the same
check-data report, the same training step and evaluation; bad YOLO / VOC files get named errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hdetr.cli import main
from hdetr.config import build_config
from hdetr.data.layouts import DatasetNotFound, resolve_source
from hdetr.data.validate import validate_source
from hdetr.engine.loaders import load_split, val_spec
from hdetr.engine.runlog import read_records
from hdetr.errors import DataError
from support import layout_builders as lb
from support.engine_helpers import TINY_MODEL


@pytest.fixture(scope="module")
def layouts(module_dir):
    """name -> (spec, layout) of one dataset written in every layout; "coco" is the reference: the COCO
    JSON given as an IMAGES:ANNOTATIONS pair."""
    root = module_dir("layouts")
    lb.write_folder_splits(root / "splits")
    lb.write_folder(root / "folder")
    lb.write_yolo(root / "yolo")
    lb.write_yolo(root / "yolo_beside", mirrored=False)
    lb.write_voc(root / "voc")
    lb.write_yolo_roboflow(root / "yolo_roboflow")
    s = root / "splits"
    return {
        "coco": ({"train": f"{s}/images/train:{s}/annotations/instances_train.json",
                  "val": f"{s}/images/val:{s}/annotations/instances_val.json"}, "pair"),
        "folder_splits": ({"train": str(s), "val": str(s)}, "folder"),
        "folder": ({"train": str(root / "folder")}, "folder"),
        "json_file": ({"train": str(root / "folder" / "annotations.json")}, "json"),
        "yolo": ({"train": str(root / "yolo"), "val": str(root / "yolo")}, "yolo"),
        "yolo_yaml": ({"train": str(root / "yolo" / "data.yaml"), "val": str(root / "yolo" / "data.yaml")}, "yolo"),
        "yolo_beside": ({"train": str(root / "yolo_beside"), "val": str(root / "yolo_beside")}, "yolo"),
        "yolo_roboflow": ({"train": str(root / "yolo_roboflow"), "val": str(root / "yolo_roboflow")}, "yolo"),
        "voc": ({"train": str(root / "voc"), "val": str(root / "voc")}, "voc"),
        "voc_forced": ({"train": f"voc:{root / 'voc'}", "val": f"voc:{root / 'voc'}"}, "voc"),
    }


def _records(spec: str, split: str) -> dict[str, tuple]:
    """file name -> (size, sorted (label, box rounded to 1e-6)), and the class names, as training reads them."""
    cfg = build_config({}, TINY_MODEL)
    ds = load_split(spec, split, cfg, train=False).dataset
    out = {}
    for iid in ds.ids:
        image = ds.load_image(iid)
        t = ds.load_target(iid, *image.size)
        boxes = sorted((int(lab), tuple(round(v, 6) for v in box)) for lab, box in
                       zip(t["labels"].tolist(), t["boxes"].tolist()))
        out[Path(ds.coco.imgs[iid]["file_name"]).name] = (image.size, boxes)
    return {"images": out, "names": ds.category_map.names}


@pytest.mark.parametrize("name", ["folder_splits", "folder", "json_file", "yolo", "yolo_yaml", "yolo_beside",
                                  "yolo_roboflow", "voc", "voc_forced"])
def test_every_layout_reads_the_coco_boxes_and_classes(layouts, name):
    spec, layout = layouts[name]
    ref = layouts["coco"][0]
    for split in spec:
        assert resolve_source(spec[split], split).layout == layout
        got, want = _records(spec[split], split), _records(ref[split], split)
        assert got == want
        assert want["names"] == list(lb.CLASSES)
        assert sum(1 for _, boxes in got["images"].values() if not boxes) == (split == "train")  # background image


def _check_data(spec: str, capsys, *args) -> tuple[int, str]:
    rc = main(["check-data", spec, *args])
    return rc, capsys.readouterr().out


def _report_body(out: str) -> str:
    """The report without its head (file names and layout differ between layouts)."""
    return out.split("\n\n", 1)[1]


@pytest.mark.parametrize("name", ["folder", "yolo", "voc"])
def test_check_data_reports_every_layout_like_coco(layouts, name, capsys):
    spec, layout = layouts[name]
    rc, out = _check_data(spec["train"], capsys)
    rc_ref, ref = _check_data(layouts["coco"][0]["train"], capsys)
    assert rc == rc_ref == 0
    assert _report_body(out) == _report_body(ref)
    assert f"layout   {resolve_source(spec['train'], 'train').describe()}" in out
    assert "objects per image      mean 1.50, max 3; one-to-one queries 300" in out


def test_check_data_warns_when_objects_exceed_the_queries(layouts, capsys, tmp_path):
    cfg = tmp_path / "few.yaml"
    cfg.write_text("model: {num_queries: 2, topk: 10}\n")
    rc, out = _check_data(layouts["yolo"][0]["train"], capsys, "--config", str(cfg))
    assert rc == 0
    assert "too_many_objects x1" in out and "3 objects, the model has 2 one-to-one queries" in out
    assert "train_2.png: image 2" in out


def _train(spec: dict, out: Path, *extra: str) -> int:
    args = ["train", "synthetic_small", *TINY_MODEL, f"data.train={spec['train']}", "train.epochs=1",
            "train.max_iters=1", "--out", str(out), "--no-progress", *extra]
    if "val" in spec:
        args.append(f"data.val={spec['val']}")
    return main(args)


@pytest.fixture(scope="module")
def coco_run(layouts, module_dir):
    out = module_dir("coco_run") / "run"
    assert _train(layouts["coco"][0], out) == 0
    return out


@pytest.mark.parametrize("name", ["yolo", "voc", "folder_splits"])
def test_one_training_step_and_eval_match_coco(layouts, coco_run, name, tmp_path, capsys):
    spec = layouts[name][0]
    assert _train(spec, tmp_path / "run") == 0
    got, want = read_records(tmp_path / "run" / "metrics.jsonl"), read_records(coco_run / "metrics.jsonl")
    losses = [r["losses"] for r in got if "losses" in r]
    ref_losses = [r["losses"] for r in want if "losses" in r]
    assert len(losses) == len(ref_losses) == 1
    assert losses[0] == pytest.approx(ref_losses[0], rel=1e-4, abs=1e-5)
    # The same model evaluated on this layout's val split and on the COCO JSON's: the same metrics.
    metrics = {}
    for key, data in (("layout", spec["val"]), ("coco", layouts["coco"][0]["val"])):
        assert main(["eval", str(coco_run), data, "--out", str(tmp_path / f"{key}.json"), "--no-progress",
                     "--workers", "0"]) == 0
        metrics[key] = json.loads((tmp_path / f"{key}.json").read_text())
    assert metrics["layout"] == pytest.approx(metrics["coco"])
    capsys.readouterr()


# --- the spec, identical in every verb ------------------------------------------------------------------


def _errors(spec: str, capsys, tmp_path) -> dict[str, tuple[int, str]]:
    """verb -> (exit status, last error line) for one dataset spec."""
    out = {}
    out["check-data"] = (main(["check-data", spec]), capsys.readouterr().err)
    out["train"] = (main(["train", "synthetic_small", *TINY_MODEL, f"data.train={spec}", "--out",
                          str(tmp_path / "t"), "--no-progress"]), capsys.readouterr().err)
    out["eval"] = (main(["eval", str(tmp_path / "model"), spec, "--split", "train", "--no-progress"]),
                   capsys.readouterr().err)
    return out


def test_the_same_spec_errors_in_every_verb(tmp_path, capsys, coco_run):
    # A model folder for eval, so that eval reaches the data.
    import shutil

    shutil.copytree(coco_run / "model", tmp_path / "model")
    (tmp_path / "empty").mkdir()
    for spec in (str(tmp_path / "nope"), str(tmp_path / "empty")):
        results = _errors(spec, capsys, tmp_path)
        messages = {verb: err.split("error: ", 1)[-1] for verb, (_, err) in results.items()}
        assert {rc for rc, _ in results.values()} == {2}, results
        assert len(set(messages.values())) == 1, messages
    assert "layouts tried" in messages["check-data"] and "Pascal VOC" in messages["check-data"]
    assert "YOLO" in messages["check-data"] and "IMAGES_DIR:ANNOTATIONS.json" in messages["check-data"]


@pytest.mark.slow
def test_the_same_spec_works_in_every_verb(layouts, coco_run, tmp_path, capsys):
    """The pair with a ':' inside the images path, and a data.yaml: check-data, train, eval all take them."""
    import shutil

    odd = tmp_path / "a:b"
    shutil.copytree(Path(layouts["coco"][0]["train"].rsplit(":", 1)[0]), odd)
    ann = Path(layouts["coco"][0]["train"].rsplit(":", 1)[1])
    for k, spec in enumerate((f"{odd}:{ann}", layouts["yolo_yaml"][0]["train"])):
        assert main(["check-data", spec]) == 0
        assert _train({"train": spec}, tmp_path / f"run{k}") == 0
        assert main(["eval", str(coco_run), spec, "--split", "train", "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()


def test_single_split_dataset_is_not_evaluated_on_its_training_images(layouts):
    cfg = build_config({}, [f"data.train={layouts['folder'][0]['train']}"])
    assert val_spec(cfg) is None
    cfg = build_config({}, [f"data.train={layouts['yolo'][0]['train']}"])
    assert val_spec(cfg) == layouts["yolo"][0]["train"]


# --- bad YOLO / VOC files: named errors -----------------------------------------------------------------


@pytest.fixture()
def yolo(tmp_path):
    return lb.write_yolo(tmp_path / "y")


def test_yolo_malformed_lines_are_named_with_file_and_line(yolo, capsys):
    label = yolo / "labels" / "train" / "train_1.txt"
    lines = lb.yolo_lines("train", 1)
    label.write_text(f"{lines[0]}\n0 0.5 0.5 0.2\n7 0.5 0.5 0.2 0.2\ncat 0.5 0.5 0.2 0.2\n")
    rc, out = _check_data(str(yolo), capsys)
    assert rc == 1
    assert f"{label}:2: image 1: expected 'class cx cy w h' (5 values)" in out
    assert f"{label}:3: image 1: class 7 is not in 'names'" in out
    assert f"{label}:4: image 1: not numbers" in out
    report = validate_source(resolve_source(str(yolo), "train"))
    assert set(report.errors) == {"label_malformed", "label_unknown_class"}
    with pytest.raises(DataError, match="label_malformed"):
        report.raise_if_fatal()
    # eval / training refuse to read around them, too
    with pytest.raises(DataError, match=f"{label}:2"):
        load_split(str(yolo), "train", build_config({}, TINY_MODEL), train=False)


def test_yolo_box_outside_the_image_is_named_and_repaired_like_coco(yolo, capsys):
    label = yolo / "labels" / "train" / "train_1.txt"
    label.write_text("0 1.3 0.5 0.2 0.2\n1 0.95 0.5 0.2 0.2\n")
    rc, out = _check_data(str(yolo), capsys)
    assert rc == 0
    assert f"{label}:1: image 1: cx=1.3 outside [0, 1]" in out
    assert "label_out_of_range x1" in out
    assert f"{label}:1: image 1, annotation 1: bbox" in out and "outside x1" in out  # dropped: no overlap with the image
    assert f"{label}:2: image 1, annotation 2: bbox" in out and "clipped x1" in out
    ds = load_split(str(yolo), "train", build_config({}, TINY_MODEL), train=False).dataset
    t = ds.load_target(1, 64, 48)
    assert t["labels"].tolist() == [1] and t["boxes"][0].tolist() == pytest.approx([54.4, 19.2, 64.0, 28.8])


def test_yolo_missing_label_file_is_a_background_image(yolo, capsys):
    (yolo / "labels" / "train" / "train_3.txt").unlink()
    rc, out = _check_data(str(yolo), capsys)
    assert rc == 0 and "label_missing x1" in out and "images without boxes          2" in out


def test_yolo_bad_data_yaml(tmp_path, capsys):
    root = lb.write_yolo(tmp_path / "y")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\n")
    rc, out = _check_data(str(root), capsys)
    err = capsys.readouterr().err
    assert rc == 1 or rc == 2
    assert "'names' must list the class names" in out + err
    (root / "data.yaml").write_text("train: images/train\nnames: [a, b]\n")
    with pytest.raises(DatasetNotFound, match="layouts tried"):
        resolve_source(str(root), "val")
    assert main(["check-data", str(root / "data.yaml"), "--split", "val"]) == 2
    assert "has no 'val' entry" in capsys.readouterr().err


@pytest.fixture()
def voc(tmp_path):
    return lb.write_voc(tmp_path / "v")


def test_voc_malformed_xml_names_file_line_and_element(voc, capsys):
    a1, a2, a3 = (voc / "Annotations" / f"train_{i}.xml" for i in (1, 2, 3))
    a1.write_text("<annotation>\n<filename>train_1.png</filename>\n<object><name>cat</object>\n</annotation>")
    a2.write_text(lb.voc_xml("train", 2).replace("<xmax>40</xmax>", ""))
    a3.write_text(lb.voc_xml("train", 3).replace("<ymin>31</ymin>", "<ymin>abc</ymin>"))
    rc, out = _check_data(str(voc), capsys)
    assert rc == 1
    assert f"{a1}: image 1: not well-formed XML at line 3" in out
    assert f"{a2}: image 2: object[1]/<bndbox/xmax> is missing or empty" in out
    assert f"{a3}: image 3: object[1]/<bndbox/ymin> is 'abc', not a number" in out


def test_voc_refuses_entities(voc, capsys):
    a1 = voc / "Annotations" / "train_1.xml"
    a1.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "cat">]>' + lb.voc_xml("train", 1))
    rc, out = _check_data(str(voc), capsys)
    assert rc == 1 and f"{a1}: image 1: refused: the XML declares a DTD or entities" in out


def test_voc_difficult_objects_are_crowd_regions(voc, capsys):
    (voc / "Annotations" / "train_2.xml").write_text(lb.voc_xml("train", 2, difficult=(1,)))
    rc, out = _check_data(str(voc), capsys)
    assert rc == 0 and "crowd (not trained on)        1" in out and "boxes used in training        5" in out
    ds = load_split(str(voc), "train", build_config({}, TINY_MODEL), train=False).dataset
    assert [a["iscrowd"] for a in ds.coco.imgToAnns[2]] == [0, 1, 0]
    assert len(ds.load_target(2, 80, 64)["labels"]) == 2


def test_voc_class_names_without_a_class_file(voc):
    (voc / "labels.txt").unlink()
    # Only VOC classes in the files: the 20 VOC classes, in their usual order (ids agree with VOC's).
    names = [c["name"] for c in resolve_source(str(voc), "train").read().doc["categories"]]
    assert names[:3] == ["aeroplane", "bicycle", "bird"] and len(names) == 20 and names.index("cat") == 7
    # Other names: sorted names of all XML files, so that the val split (no 'gap' in it) agrees with train.
    for f in (voc / "Annotations").glob("*.xml"):
        f.write_text(f.read_text().replace(">cat<", ">crown<").replace(">dog<", ">gap<"))
    (voc / "Annotations" / "val_2.xml").write_text(lb.voc_xml("val", 2).replace(">dog<", ">crown<"))
    for split in ("train", "val"):
        names = [c["name"] for c in resolve_source(str(voc), split).read().doc["categories"]]
        assert names == ["crown", "gap"]


# --- symlinks -------------------------------------------------------------------------------------------


def test_symlinked_images_are_followed_and_loops_refused(tmp_path, capsys):
    store = tmp_path / "store"
    lb.write_folder(store)
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    for f in (store / "images").iterdir():
        os.symlink(f, ds / "images" / f.name)
    (ds / "annotations.json").write_text((store / "annotations.json").read_text())
    rc, out = _check_data(str(ds), capsys)
    assert rc == 0 and "boxes used in training        6" in out
    os.unlink(ds / "images" / "train_1.png")
    os.symlink(ds / "images" / "loop_b", ds / "images" / "loop_a")
    os.symlink(ds / "images" / "loop_a", ds / "images" / "loop_b")
    os.symlink(ds / "images" / "loop_a", ds / "images" / "train_1.png")
    rc, out = _check_data(str(ds), capsys)
    assert rc == 1 and "path_escape" not in out.split("ERRORS")[0]
    assert "cannot resolve the path" in out


def test_convert_data_writes_the_coco_json_training_reads(layouts, tmp_path, capsys):
    for name in ("yolo", "voc"):
        spec = layouts[name][0]["train"]
        out = tmp_path / f"{name}.json"
        assert main(["convert-data", spec, str(out)]) == 0
        images_dir = resolve_source(spec, "train").images_dir
        assert f"use it as: {images_dir}:{out}" in capsys.readouterr().out
        assert _records(f"{images_dir}:{out}", "train") == _records(layouts["coco"][0]["train"], "train")
        before = out.read_bytes()
        assert main(["convert-data", spec, str(out)]) == 2  # never overwrites
        assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["convert-data", layouts["folder"][0]["train"], str(tmp_path / "x.json")]) == 2
    assert "already a COCO JSON" in capsys.readouterr().err
