"""A corpus of bad datasets, generated in tmp dirs: each must end in a clear fatal error naming the file
and the problem (``hdetr check-data`` exit status 1), or in a counted, documented repair, never in a crash
or a silent loss of annotations. docs/reliability.md has the table these tests pin down."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hdetr.cli import main
from hdetr.data.images import load_image, to_rgb
from hdetr.data.coco import CocoDetection
from hdetr.data.validate import IMAGE_KINDS, validate_dataset
from hdetr.errors import BadImageError, DataError, UserError

# --- building blocks --------------------------------------------------------


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _base_doc():
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 6], "iscrowd": 0, "area": 60},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0, "area": 25},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


class DS:
    """A small valid dataset in ``root`` (images next to ann.json) that each test then breaks."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        _noise(40, 30).save(root / "a.png")
        _noise(20, 20, 1).save(root / "b.png")
        self.doc = _base_doc()
        self.ann = root / "ann.json"

    def write(self, doc=None, raw: bytes | str | None = None) -> DS:
        if raw is not None:
            self.ann.write_bytes(raw.encode() if isinstance(raw, str) else raw)
        else:
            self.ann.write_text(json.dumps(self.doc if doc is None else doc))
        return self

    def image(self, iid: int) -> dict:
        return next(i for i in self.doc["images"] if i["id"] == iid)

    def report(self, **kw):
        return validate_dataset(self.root, self.ann, workers=1, **kw)

    def cli(self, capsys, *extra) -> tuple[int, str]:
        rc = main(["check-data", str(self.ann), *extra])
        cap = capsys.readouterr()
        return rc, cap.out + cap.err


@pytest.fixture
def ds(tmp_path):
    return DS(tmp_path / "ds")


def assert_fatal(ds: DS, capsys, kind: str, *needles: str):
    """Fatal ``kind`` in the report, the first example and the CLI output name every needle, exit 1,
    ``raise_if_fatal`` raises a UserError naming the kind."""
    report = ds.report()
    assert kind in report.errors, report.format()
    example = str(report.errors[kind].examples[0])
    for n in needles:
        assert n in example, (n, example)
    with pytest.raises(DataError) as err:
        report.raise_if_fatal()
    assert isinstance(err.value, UserError) and kind in str(err.value) and str(ds.ann) in str(err.value)
    rc, out = ds.cli(capsys)
    assert rc == 1, out
    assert kind in out and "FAILED" in out
    for n in needles:
        assert n in out, (n, out)
    return report


def assert_valid(ds: DS, capsys):
    report = ds.report()
    assert report.ok, report.format()
    report.raise_if_fatal()
    rc, out = ds.cli(capsys)
    assert rc == 0 and "OK" in out, out
    return report


# --- the control --------------------------------------------------------------


def test_clean_dataset_is_ok(ds, capsys, tmp_path):
    ds.write()
    report = assert_valid(ds, capsys)
    assert (report.num_images, report.num_annotations, report.num_boxes) == (2, 2, 2)
    assert report.boxes_per_class == {1: 1, 2: 1} and report.images_without_boxes == 0
    assert not report.repairs and not report.warnings and report.image_modes == {"RGB": 2}
    out = tmp_path / "r" / "report.json"
    assert main(["check-data", str(ds.ann), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ok"] and data["num_boxes"] == 2
    assert [c["name"] for c in data["boxes_per_class"]] == ["cat", "dog"]


# --- image files --------------------------------------------------------------


def test_truncated_jpeg(ds, capsys):
    buf = io.BytesIO()
    _noise(40, 30).save(buf, "JPEG", quality=95)
    (ds.root / "a.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    ds.image(1)["file_name"] = "a.jpg"
    ds.write()
    report = assert_fatal(ds, capsys, "corrupt_image", "a.jpg", "image 1", "truncated", "1 annotation")
    assert report.bad_image_ids == {1}
    with pytest.raises(BadImageError, match=r"a\.jpg.*truncated") as err:
        CocoDetection(ds.root, ds.ann)[0]
    assert err.value.image_id == 1 and err.value.path.name == "a.jpg"


@pytest.mark.parametrize("content", [b"this is not an image at all" * 10, b""], ids=["garbage", "empty"])
def test_corrupt_image_file(ds, capsys, content):
    (ds.root / "b.png").write_bytes(content)
    ds.write()
    assert_fatal(ds, capsys, "corrupt_image", "b.png", "image 2", "cannot decode")
    with pytest.raises(BadImageError, match=r"b\.png"):
        CocoDetection(ds.root, ds.ann)[1]


def test_missing_image_file(ds, capsys):
    (ds.root / "b.png").unlink()
    ds.write()
    assert_fatal(ds, capsys, "missing_image", "b.png", "image 2", "not found")
    with pytest.raises(BadImageError, match=r"b\.png.*not found"):
        CocoDetection(ds.root, ds.ann)[1]


def test_decompression_bomb(ds, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 40x30 image is > 2x the limit
    ds.write()
    assert_fatal(ds, capsys, "corrupt_image", "a.png", "DecompressionBomb")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "1"])
def test_other_image_modes_are_converted_to_rgb(ds, capsys, mode):
    im = _noise(40, 30).convert(mode)
    name = "a.jpg" if mode == "CMYK" else "a.png"
    if mode == "P":
        im.info["transparency"] = 0
    im.save(ds.root / name)
    ds.image(1)["file_name"] = name
    ds.write()
    report = assert_valid(ds, capsys)
    assert report.image_modes.get(mode) == 1
    img, target = CocoDetection(ds.root, ds.ann)[0]
    assert img.shape == (3, 30, 40) and len(target["boxes"]) == 1
    assert load_image(ds.root / name).mode == "RGB"


def test_16bit_png_is_scaled_not_clipped(ds, capsys):
    values = np.array([[0, 257, 4096, 32768, 65535]] * 30, dtype=np.uint16)
    values = np.tile(values, (1, 8))  # 30 x 40
    Image.fromarray(values).save(ds.root / "a.png")
    assert Image.open(ds.root / "a.png").mode in ("I;16", "I")
    ds.write()
    report = assert_valid(ds, capsys)
    assert sum(report.image_modes.values()) == 2
    rgb = np.asarray(load_image(ds.root / "a.png"))
    assert rgb.shape == (30, 40, 3)
    assert rgb[0, :5, 0].tolist() == [0, 1, 16, 128, 255]  # PIL's own convert gives [0, 255, 255, 255, 255]


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32bit_images_are_scaled(tmp_path, mode):
    if mode == "I":
        small = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
        assert np.asarray(to_rgb(small))[0, :, 0].tolist() == [0, 100, 255]  # already 8-bit range: kept
        big = Image.fromarray(np.array([[0, 32768, 65535, 70000]], dtype=np.int32))
        assert np.asarray(to_rgb(big))[0, :, 0].tolist() == [0, 128, 255, 255]
    else:
        unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
        assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]
        wide = Image.fromarray(np.array([[-10.0, 0.0, 10.0, np.nan]], dtype=np.float32))
        assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 128, 255, 128]
    im = Image.fromarray(np.full((30, 40), 200, dtype=np.int32 if mode == "I" else np.float32))
    im.save(tmp_path / "x.tif")
    assert np.asarray(load_image(tmp_path / "x.tif")).shape == (30, 40, 3)


def _exif_rotated_jpeg(path: Path, stored=(40, 30)):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display: stored 40x30 shows as 30x40
    _noise(*stored).save(path, exif=exif.tobytes())


def test_exif_rotated_jpeg_with_displayed_size_is_valid(ds, capsys):
    _exif_rotated_jpeg(ds.root / "r.jpg")
    ds.doc["images"][0] = {"id": 1, "file_name": "r.jpg", "width": 30, "height": 40}
    ds.write()
    report = assert_valid(ds, capsys)
    assert report.exif_rotated == 1
    img, t = CocoDetection(ds.root, ds.ann)[0]
    assert t["orig_size"].tolist() == [40, 30]


def test_exif_rotation_swapping_the_json_size_is_fatal(ds, capsys):
    _exif_rotated_jpeg(ds.root / "r.jpg")
    ds.doc["images"][0] = {"id": 1, "file_name": "r.jpg", "width": 40, "height": 30}  # the stored size
    ds.write()
    assert_fatal(ds, capsys, "exif_size_swap", "r.jpg", "image 1", "EXIF", "40x30", "30x40")
    with pytest.raises(BadImageError, match=r"r\.jpg.*40x30.*30x40"):
        CocoDetection(ds.root, ds.ann)[0]


def test_image_size_differs_from_json(ds, capsys):
    ds.image(2)["width"] = 64
    ds.write()
    assert_fatal(ds, capsys, "size_mismatch", "b.png", "image 2", "64x20", "20x20")
    with pytest.raises(BadImageError, match=r"b\.png.*64x20"):
        CocoDetection(ds.root, ds.ann)[1]


# --- the annotation file ------------------------------------------------------


@pytest.mark.parametrize("raw,needle", [
    ("{'images': []}", "line 1"),  # Python, not JSON
    ('{"images": [], "annotations": [', "line 1"),  # cut short
    ("", "line 1"),  # empty file
    (b"\xff\xfe\x00garbage", "UTF-8"),  # binary
], ids=["python-dict", "truncated", "empty", "binary"])
def test_annotation_file_not_json(ds, capsys, raw, needle):
    ds.write(raw=raw)
    assert_fatal(ds, capsys, "ann_not_json", "ann.json", "not valid JSON", needle)


def test_annotation_file_unreadable(ds, capsys):
    ds.ann.mkdir()  # a folder where the file should be
    report = ds.report()
    assert "ann_unreadable" in report.errors and "ann.json" in str(report.errors["ann_unreadable"].examples[0])


def test_annotation_top_level_not_an_object(ds, capsys):
    ds.write([1, 2, 3])
    assert_fatal(ds, capsys, "wrong_type", "ann.json", "top level", "list")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(ds, capsys, key):
    del ds.doc[key]
    ds.write()
    assert_fatal(ds, capsys, "missing_key", "ann.json", repr(key))


@pytest.mark.parametrize("key", ["id", "image_id", "bbox", "category_id"])
def test_annotation_missing_key(ds, capsys, key):
    del ds.doc["annotations"][0][key]
    ds.write()
    assert_fatal(ds, capsys, "missing_key", "ann.json", repr(key), "annotations[0]")


@pytest.mark.parametrize("key", ["id", "file_name"])
def test_image_missing_key(ds, capsys, key):
    del ds.doc["images"][1][key]
    ds.write()
    assert_fatal(ds, capsys, "missing_key", "ann.json", key)


@pytest.mark.parametrize("where,value,needle", [
    ("images", {"1": "a.png"}, "'images' must be a list"),
    ("image.id", "one", "'id' must be an integer"),
    ("image.file_name", 7, "'file_name' must be a string"),
    ("image.width", -40, "'width' must be a positive integer"),
    ("ann.bbox", "2 3 10 6", "'bbox' must be a list of 4 numbers"),
    ("ann.bbox", [2, 3, 10], "'bbox' must be a list of 4 numbers"),
    ("ann.bbox", [2, 3, True, 6], "'bbox' must be a list of 4 numbers"),
    ("ann.bbox", [2, 3, None, 6], "'bbox' must be a list of 4 numbers"),
    ("ann.category_id", "1", "'category_id' must be an integer"),
    ("ann.image_id", 1.5, "'image_id' must be an integer"),
    ("category.id", "cat", "'id' must be an integer"),
], ids=lambda v: str(v)[:20])
def test_wrong_types(ds, capsys, where, value, needle):
    section, _, key = where.partition(".")
    if not key:
        ds.doc[section] = value
    else:
        target = {"image": ds.doc["images"][0], "ann": ds.doc["annotations"][0], "category": ds.doc["categories"][0]}
        target[section][key] = value
    ds.write()
    assert_fatal(ds, capsys, "wrong_type", "ann.json", needle)


def test_no_images_and_no_categories(ds, capsys):
    ds.write({"images": [], "annotations": [], "categories": []})
    report = assert_fatal(ds, capsys, "no_images", "ann.json")
    assert "no_categories" in report.errors


# --- ids ------------------------------------------------------------------------


def test_unknown_category_id(ds, capsys):
    ds.doc["annotations"][1]["category_id"] = 99
    ds.write()
    assert_fatal(ds, capsys, "unknown_category", "ann.json", "annotation 11", "category id 99", "[1, 2]")
    with pytest.raises(DataError, match=r"annotation 11.*category id 99"):
        CocoDetection(ds.root, ds.ann)[1]


def test_annotation_on_unknown_image(ds, capsys):
    ds.doc["annotations"][1]["image_id"] = 5
    ds.write()
    assert_fatal(ds, capsys, "unknown_image", "ann.json", "annotation 11", "image id 5")


def test_duplicate_image_id(ds, capsys):
    ds.doc["images"][1]["id"] = 1
    ds.write()
    assert_fatal(ds, capsys, "duplicate_image_id", "ann.json", "image id 1", "a.png", "b.png")


def test_duplicate_annotation_id(ds, capsys):
    ds.doc["annotations"][1]["id"] = 10
    ds.write()
    assert_fatal(ds, capsys, "duplicate_annotation_id", "ann.json", "annotation 10")


def test_duplicate_category_id(ds, capsys):
    ds.doc["categories"].append({"id": 2, "name": "dog again"})
    ds.write()
    assert_fatal(ds, capsys, "duplicate_category_id", "ann.json", "category id 2")


def test_two_images_sharing_a_file_is_a_warning(ds, capsys):
    ds.doc["images"].append({"id": 3, "file_name": "a.png", "width": 40, "height": 30})
    ds.write()
    report = assert_valid(ds, capsys)
    assert report.warnings["duplicate_file_name"].count == 1


# --- boxes: repairs, counted, identical in training ---------------------------


@pytest.mark.parametrize("bbox,kind,after", [
    ([5, 5, 0, 4], "degenerate", None),
    ([5, 5, 4, -3], "degenerate", None),
    ([30, 20, 20, 20], "clipped", [30, 20, 40, 30]),
    ([-5, -5, 10, 10], "clipped", [0, 0, 5, 5]),
    ([45, 5, 4, 4], "outside", None),
    ([-20, 5, 10, 4], "outside", None),
    ([float("nan"), 5, 4, 4], "nonfinite", None),
    ([5, 5, float("inf"), 4], "nonfinite", None),
    ([1e308, 5, 1e308, 4], "nonfinite", None),  # x + w overflows
], ids=["zero-width", "negative-height", "overhang", "negative-origin", "outside-right", "outside-left",
        "nan", "inf", "overflow"])
def test_box_repairs(ds, capsys, bbox, kind, after):
    ds.doc["annotations"].append({"id": 12, "image_id": 1, "category_id": 2, "bbox": bbox, "iscrowd": 0})
    ds.write()
    report = assert_valid(ds, capsys)  # a repair is not fatal
    assert report.repairs[kind].count == 1
    example = str(report.repairs[kind].examples[0])
    assert "ann.json" in example and "annotation 12" in example and "image 1" in example
    rc, out = ds.cli(capsys)
    assert kind in out and "annotation 12" in out
    # The dataset applies exactly this repair.
    t = CocoDetection(ds.root, ds.ann).load_target(1, 40, 30)
    assert report.num_boxes == 2 + (after is not None)
    if after is None:
        assert t["boxes"].tolist() == [[2, 3, 12, 9]]
    else:
        assert t["boxes"].tolist() == [[2, 3, 12, 9], after]


def test_many_dropped_boxes_warn(ds, capsys):
    for k in range(4):
        ds.doc["annotations"].append({"id": 20 + k, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 0]})
    ds.write()
    report = assert_valid(ds, capsys)
    assert report.repairs["degenerate"].count == 4 and "many_dropped" in report.warnings
    assert "4 of 6" in str(report.warnings["many_dropped"].examples[0])


def test_image_without_boxes_is_valid_and_counted(ds, capsys):
    ds.doc["annotations"] = ds.doc["annotations"][:1]
    ds.write()
    report = assert_valid(ds, capsys)
    assert report.images_without_boxes == 1 and report.num_boxes == 1
    _, t = CocoDetection(ds.root, ds.ann)[1]
    assert t["boxes"].shape == (0, 4)


def test_crowd_annotations_are_counted_not_trained(ds, capsys):
    ds.doc["annotations"][1]["iscrowd"] = 1
    ds.write()
    report = assert_valid(ds, capsys)
    assert report.num_crowd == 1 and report.num_boxes == 1 and report.images_without_boxes == 1


def test_image_without_size_is_checked_against_the_file(ds, capsys):
    del ds.image(1)["width"], ds.image(1)["height"]
    ds.doc["annotations"][0]["bbox"] = [30, 20, 20, 20]
    ds.write()
    report = assert_valid(ds, capsys)
    assert report.repairs["clipped"].count == 1
    report = ds.report(check_images=False)
    assert "no_size" in report.warnings and "images_not_checked" in report.warnings and not report.repairs


def test_report_counts_match_what_training_sees(ds):
    """Mixed repairs: the report's totals equal the boxes CocoDetection yields, class by class."""
    extra = [[30, 20, 20, 20], [5, 5, 0, 4], [45, 5, 4, 4], [float("nan"), 1, 1, 1], [1, 1, 3, 3], [-3, 2, 8, 8]]
    for k, bbox in enumerate(extra):
        ds.doc["annotations"].append({"id": 30 + k, "image_id": 1 + k % 2, "category_id": 1 + k % 2, "bbox": bbox})
    ds.write()
    report = ds.report()
    dataset = CocoDetection(ds.root, ds.ann)
    labels = torch.cat([dataset[i][1]["labels"] for i in range(len(dataset))])
    assert report.num_boxes == len(labels) == 5  # 2 + clipped + ok + clipped
    names = dataset.category_map.cat_id_to_index
    assert {c: int((labels == names[c]).sum()) for c in names} == report.boxes_per_class


def test_fix_report_lists_every_repair(ds, capsys):
    for k in range(8):
        ds.doc["annotations"].append({"id": 40 + k, "image_id": 1, "category_id": 1, "bbox": [35, 1, 10, 2]})
    ds.write()
    rc, out = ds.cli(capsys)
    assert rc == 0 and "and 3 more" in out and "annotation 47" not in out
    rc, out = ds.cli(capsys, "--fix-report")
    assert rc == 0 and "more" not in out
    assert all(f"annotation {40 + k}" in out for k in range(8))
    assert "[35, 1, 10, 2] -> [35.0, 1.0, 5.0, 2.0]" in out


# --- paths that leave the images folder ----------------------------------------


def _escape_target(ds):
    outside = ds.root.parent / "secret.png"
    _noise(40, 30).save(outside)
    return outside


@pytest.mark.parametrize("how", ["dotdot", "absolute", "nul"])
def test_paths_escaping_the_images_folder(ds, capsys, how):
    outside = _escape_target(ds)
    if how == "dotdot":
        name = "../secret.png"
    elif how == "absolute":
        name = str(outside)
    else:
        name = "a.png\x00.jpg"
    ds.image(1)["file_name"] = name
    ds.write()
    needle = "NUL" if how == "nul" else "escapes the images folder"
    report = assert_fatal(ds, capsys, "path_escape", "ann.json", "image 1", needle)
    assert 1 in report.bad_image_ids
    with pytest.raises(BadImageError, match=needle):
        CocoDetection(ds.root, ds.ann)[0]


@pytest.mark.parametrize("how", ["symlink-file", "symlink-dir"])
def test_symlinks_placed_in_the_images_folder_are_followed(ds, capsys, how):
    """The annotation file cannot name a file outside the folder, but a symlink the dataset's owner put
    inside it may point anywhere (image farms, shared storage)."""
    outside = _escape_target(ds)
    if how == "symlink-file":
        os.symlink(outside, ds.root / "link.png")
        name = "link.png"
    else:
        os.symlink(ds.root.parent, ds.root / "sub")
        name = "sub/secret.png"
    ds.image(1)["file_name"] = name
    ds.write()
    assert_valid(ds, capsys)
    assert CocoDetection(ds.root, ds.ann)[0][0].shape == (3, 30, 40)


def test_symlink_loop_is_refused(ds, capsys):
    os.symlink(ds.root / "loop_b", ds.root / "loop_a")
    os.symlink(ds.root / "loop_a", ds.root / "loop_b")
    ds.image(1)["file_name"] = "loop_a"
    ds.write()
    report = assert_fatal(ds, capsys, "path_escape", "ann.json", "image 1", "cannot resolve the path")
    assert 1 in report.bad_image_ids


def test_symlink_inside_the_images_folder_is_fine(ds, capsys):
    (ds.root / "sub").mkdir()
    _noise(40, 30).save(ds.root / "sub" / "real.png")
    os.symlink(ds.root / "sub" / "real.png", ds.root / "alias.png")
    ds.image(1)["file_name"] = "alias.png"
    ds.write()
    assert_valid(ds, capsys)
    assert CocoDetection(ds.root, ds.ann)[0][0].shape == (3, 30, 40)


# --- the trainer's view -----------------------------------------------------------


def test_allow_bad_images_skips_them_and_counts(ds):
    (ds.root / "b.png").write_bytes(b"broken")
    ds.write()
    report = ds.report()
    with pytest.raises(DataError, match="corrupt_image x1"):
        report.raise_if_fatal()
    report.raise_if_fatal(allow_bad_images=True)  # only image-level problems: the trainer may skip them
    assert report.bad_image_ids == {2} and set(report.errors) <= set(IMAGE_KINDS)
    dataset = CocoDetection(ds.root, ds.ann, skip_image_ids=report.bad_image_ids)
    assert len(dataset) == 1 and dataset[0][1]["labels"].tolist() == [0]
    # A fatal annotation problem still stops training.
    ds.doc["annotations"][0]["category_id"] = 7
    ds.write()
    with pytest.raises(DataError, match="unknown_category"):
        ds.report().raise_if_fatal(allow_bad_images=True)


def test_cli_usage_errors(tmp_path, capsys):
    assert main(["check-data", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_report_on_synthetic_dataset_is_clean(tmp_path):
    from hdetr.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, num_train=6, num_val=2, image_size=48, seed=0)
    report = validate_dataset(tmp_path / "train", tmp_path / "train" / "_annotations.coco.json", workers=2)
    assert report.ok and not report.repairs and report.num_images == 6
    assert report.num_boxes == sum(report.boxes_per_class.values()) > 0
    assert not math.isnan(report.num_boxes)
