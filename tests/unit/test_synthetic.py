import json
from pathlib import Path

import pytest
from faster_coco_eval import COCO
from PIL import Image

from hdetr.data import synthetic
from hdetr.data.synthetic import write_synthetic_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(module_dir):
    root = module_dir("synth")
    # 120 images: enough that the ~3% empty images and every class show up.
    summary = write_synthetic_dataset(root, num_train=120, num_val=10, image_size=(72, 64), seed=5)
    return root, summary


def test_same_seed_is_byte_identical(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", num_train=6, num_val=3, image_size=48, seed=1)
    b = write_synthetic_dataset(tmp_path / "b", num_train=6, num_val=3, image_size=48, seed=1)
    c = write_synthetic_dataset(tmp_path / "c", num_train=6, num_val=3, image_size=48, seed=2)
    fa, fb, fc = _files(Path(a["root"])), _files(Path(b["root"])), _files(Path(c["root"]))
    assert len(fa) == 6 + 3 + 2
    assert fa == fb
    assert fa.keys() == fc.keys() and fa != fc


def test_roboflow_layout_and_summary(small):
    root, summary = small
    for split, n in (("train", 120), ("valid", 10)):
        assert (root / split / "_annotations.coco.json").is_file()
        assert summary[split]["num_images"] == n
        assert len(list((root / split).glob("*.jpg"))) == n


def test_valid_coco_with_boxes_inside_images(small):
    root, summary = small
    for split in ("train", "valid"):
        ann_file = root / split / "_annotations.coco.json"
        doc = json.loads(ann_file.read_text())
        coco = COCO(str(ann_file))
        cat_ids = {c["id"] for c in doc["categories"]}
        assert cat_ids == {c["id"] for c in synthetic.CATEGORIES} and min(cat_ids) == 1
        assert 3 <= len(cat_ids) <= 6 and all(c["name"] for c in doc["categories"])
        assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
        assert summary[split]["num_annotations"] == len(doc["annotations"])
        for img in doc["images"]:
            with Image.open(root / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (72, 64)
            anns = coco.imgToAnns.get(img["id"], [])
            assert len(anns) <= synthetic.MAX_OBJECTS
            for a in anns:
                x, y, w, h = a["bbox"]
                assert a["category_id"] in cat_ids and a["iscrowd"] == 0
                assert w > 0 and h > 0 and 0 < a["area"] <= w * h
                assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]


def test_content_is_varied(small):
    root, _ = small
    doc = json.loads((root / "train" / "_annotations.coco.json").read_text())
    per_image = {img["id"]: 0 for img in doc["images"]}
    for a in doc["annotations"]:
        per_image[a["image_id"]] += 1
    counts = set(per_image.values())
    assert 0 in counts and max(counts) >= 4
    assert {a["category_id"] for a in doc["annotations"]} == {c["id"] for c in synthetic.CATEGORIES}
    widths = sorted(a["bbox"][2] for a in doc["annotations"])
    assert widths[0] <= 8 and widths[-1] >= 20  # small through large objects


# sha256 over six rendered scenes per generator (raw pixels and objects, before JPEG encoding, so that
# no codec version enters): the values the generators gave before their object placement became one
# function (synthetic.place_objects). A change here changes every dataset a seed gives; if a numpy or
# Pillow upgrade is the cause (their random streams or drawing), check that before updating a value.
GOLDEN_SCENES = {
    "shapes": "324597607149e381e227ec56fb5fbc8695f72e5239fca00624306b123be29186",
    "shapes_by_class": "914ccae2f94e6d5ec8b893ed844c94f8dcdef29805b4e173ecb80a70d2450965",
    "coco_like": "2fd3e5c9a1a91348221234c07357beecc654abde264b47697c6a38ebce038941",
    "target": "53b7f6ff792a19e554334ae13e0b48e75d5c81add6b37e1c1f381a1c039121f9",
}


@pytest.mark.parametrize("style", sorted(GOLDEN_SCENES))
def test_generators_give_the_scenes_they_always_gave(style):
    import hashlib

    import numpy as np

    from benchmarks import synthetic_target  # the fine-tuning benchmark's target domain
    from hdetr.data import coco_like

    render = {
        "shapes": lambda rng: synthetic.render(rng, 72, 64),
        "shapes_by_class": lambda rng: synthetic.render(rng, 64, 64, "by_class"),
        "coco_like": lambda rng: coco_like.render(rng, 80, 64),
        "target": lambda rng: synthetic_target._render(rng, 64, 64),
    }[style]
    digest = hashlib.sha256()
    for i in range(6):
        img, objects = render(np.random.default_rng([3, 0, i]))
        digest.update(img.tobytes())
        digest.update(json.dumps(objects).encode())
    assert digest.hexdigest() == GOLDEN_SCENES[style]
