import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from hdetr.data.categories import COCO_CATEGORIES, CategoryMap
from hdetr.data.coco import CocoDetection
from hdetr.data.layouts import resolve_source
from hdetr.data.synthetic import write_synthetic_dataset
from hdetr.data.transforms import build_transforms


def resolve_dataset(spec, split):
    """(images folder, annotation file) of a COCO-JSON split, as the layout resolver finds them."""
    src = resolve_source(spec, split)
    return src.images_dir, src.ann_file


def _write_json(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _doc(images=(), annotations=(), categories=({"id": 1, "name": "a"},)):
    return {"images": list(images), "annotations": list(annotations), "categories": list(categories)}


# --- layout detection -------------------------------------------------------


def test_resolve_coco2017(tmp_path):
    (tmp_path / "val2017").mkdir()
    (tmp_path / "train2017").mkdir()
    _write_json(tmp_path / "annotations" / "instances_val2017.json", _doc())
    _write_json(tmp_path / "annotations" / "instances_train2017.json", _doc())
    assert resolve_dataset(tmp_path, "val") == (tmp_path / "val2017", tmp_path / "annotations/instances_val2017.json")
    assert resolve_dataset(str(tmp_path), "train")[0] == tmp_path / "train2017"


def test_resolve_roboflow(tmp_path):
    for split in ("train", "valid"):
        _write_json(tmp_path / split / "_annotations.coco.json", _doc())
    assert resolve_dataset(tmp_path, "val") == (tmp_path / "valid", tmp_path / "valid/_annotations.coco.json")
    assert resolve_dataset(tmp_path, "valid")[0] == tmp_path / "valid"
    assert resolve_dataset(tmp_path, "train")[0] == tmp_path / "train"
    with pytest.raises(FileNotFoundError, match="(?s)'test'.*layouts tried"):
        resolve_dataset(tmp_path, "test")


def test_resolve_lvis(tmp_path):
    (tmp_path / "train2017").mkdir()
    _write_json(tmp_path / "annotations" / "lvis_v1_val.json", _doc())
    assert resolve_dataset(tmp_path, "val") == (tmp_path, tmp_path / "annotations/lvis_v1_val.json")
    assert resolve_dataset(f"lvis:{tmp_path}", "val")[0] == tmp_path


def test_resolve_explicit(tmp_path):
    ann = _write_json(tmp_path / "labels.json", _doc())
    (tmp_path / "imgs").mkdir()
    assert resolve_dataset((tmp_path / "imgs", ann), "train") == (tmp_path / "imgs", ann)
    assert resolve_dataset({"val": {"images": tmp_path / "imgs", "json": ann}}, "val") == (tmp_path / "imgs", ann)
    assert resolve_dataset(ann, "val") == (tmp_path, ann)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        resolve_dataset((tmp_path / "imgs", tmp_path / "missing.json"), "train")


def test_resolve_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        resolve_dataset(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        resolve_dataset(tmp_path / "empty", "train")
    msg = str(err.value)
    assert str(tmp_path / "empty") in msg and "instances_" in msg and "_annotations.coco.json" in msg
    with pytest.raises(ValueError, match="split"):
        resolve_dataset(tmp_path, "bogus")


# --- category map -----------------------------------------------------------


def test_category_map_coco_mode():
    cats = [{"id": i, "name": n} for i, n in COCO_CATEGORIES.items()]
    cm = CategoryMap.from_categories(cats[::-1])  # order in the file must not matter
    assert cm.mode == "coco" and cm.num_classes == 91
    assert len(cm.names) == 91 and cm.names[1] == "person" and cm.names[90] == "toothbrush"
    assert cm.names[0] == "N/A" and cm.names[12] == "N/A"
    assert cm.cat_id_to_index[18] == 18 and cm.index_to_cat_id[90] == 90


def test_category_map_contiguous_mode():
    cats = [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
    cm = CategoryMap.from_categories(cats)
    assert cm.mode == "contiguous" and cm.num_classes == 3
    assert cm.names == ["three", "seven", "ten"]
    assert cm.cat_id_to_index == {3: 0, 7: 1, 10: 2}
    assert cm.index_to_cat_id == {0: 3, 1: 7, 2: 10}
    # A COCO subset is not the COCO label space: it gets dense indices.
    sub = CategoryMap.from_categories([{"id": 1, "name": "person"}, {"id": 3, "name": "car"}])
    assert sub.mode == "contiguous" and sub.num_classes == 2


@pytest.mark.parametrize("cats", [
    [{"id": i, "name": n} for i, n in COCO_CATEGORIES.items()],
    [{"id": 4, "name": "x"}, {"id": 9, "name": "y"}],
])
def test_category_map_dict_round_trip(cats):
    cm = CategoryMap.from_categories(cats)
    d = json.loads(json.dumps(cm.to_dict()))  # must survive a checkpoint's JSON/pickle
    back = CategoryMap.from_dict(d)
    assert back == cm
    assert back.names == cm.names and back.cat_id_to_index == cm.cat_id_to_index


# --- dataset ----------------------------------------------------------------


def _tiny_dataset(tmp_path):
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "b.png")
    anns = [
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [2, 3, 10, 6], "iscrowd": 0, "area": 60},
        {"id": 2, "image_id": 7, "category_id": 9, "bbox": [0, 0, 40, 30], "iscrowd": 1, "area": 1200},
        {"id": 3, "image_id": 7, "category_id": 9, "bbox": [30, 20, 20, 20], "iscrowd": 0, "area": 400},  # clipped
        {"id": 4, "image_id": 7, "category_id": 5, "bbox": [5, 5, 0, 4], "iscrowd": 0, "area": 0},  # degenerate
        {"id": 5, "image_id": 7, "category_id": 5, "bbox": [45, 5, 4, 4], "iscrowd": 0, "area": 16},  # outside
    ]
    doc = _doc(
        images=[{"id": 7, "file_name": "a.png", "width": 40, "height": 30},
                {"id": 3, "file_name": "b.png", "width": 20, "height": 20}],
        annotations=anns,
        categories=[{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}],
    )
    return _write_json(tmp_path / "ann.json", doc)


def test_dataset_targets_crowd_clip_degenerate(tmp_path):
    ds = CocoDetection(tmp_path, _tiny_dataset(tmp_path))
    assert len(ds) == 2 and ds.ids == [3, 7]
    img, t = ds[1]
    assert img.shape == (3, 30, 40) and img.dtype == torch.float32
    assert t["image_id"].dtype == torch.int64 and t["image_id"].ndim == 0 and int(t["image_id"]) == 7
    assert t["orig_size"].tolist() == [30, 40] and t["size"].tolist() == [30, 40]
    assert t["labels"].dtype == torch.int64 and t["boxes"].dtype == torch.float32
    # Crowd, zero-width and fully-outside boxes are gone; the overhanging one is clipped.
    assert t["labels"].tolist() == [0, 1]  # contiguous: 5 -> 0, 9 -> 1
    expected = torch.tensor([
        [(2 + 5) / 40, (3 + 3) / 30, 10 / 40, 6 / 30],
        [35 / 40, 25 / 30, 10 / 40, 10 / 30],
    ])
    torch.testing.assert_close(t["boxes"], expected)
    img, t = ds[0]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


def test_dataset_applies_exif_orientation(tmp_path):
    im = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 40x20 shows as 20x40
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    ann = _write_json(tmp_path / "r.json", _doc(images=[{"id": 1, "file_name": "r.jpg", "width": 20, "height": 40}]))
    img, t = CocoDetection(tmp_path, ann)[0]
    assert t["orig_size"].tolist() == [40, 20] and img.shape == (3, 40, 20)


def test_dataset_on_synthetic_with_train_transforms(tmp_path):
    write_synthetic_dataset(tmp_path, num_train=4, num_val=2, image_size=64, seed=0)
    images_dir, ann = resolve_dataset(tmp_path, "train")
    tf = build_transforms(True, scales=[48, 64], max_size=100, crop=((48,), 32, 48))
    ds = CocoDetection(images_dir, ann, transforms=tf)
    assert ds.category_map.mode == "contiguous" and ds.category_map.num_classes == 4
    torch.manual_seed(0)
    for i in range(len(ds)):
        img, t = ds[i]
        assert t["size"].tolist() == list(img.shape[-2:]) and t["orig_size"].tolist() == [64, 64]
        assert len(t["boxes"]) == len(t["labels"])
        assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
        assert ((t["labels"] >= 0) & (t["labels"] < 4)).all()
