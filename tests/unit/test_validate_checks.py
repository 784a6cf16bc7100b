"""hdetr.data.validate's named checks: ambiguous metadata is warned about, capped quotes, the check list."""

from __future__ import annotations

import json

from PIL import Image

from hdetr.data import validate
from hdetr.data.validate import validate_dataset


def _dataset(tmp_path, categories, images=None):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30)).save(tmp_path / name)
    images = images or [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                        {"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    anns = [{"id": i + 1, "image_id": images[i % len(images)]["id"], "category_id": categories[i % len(categories)]["id"],
             "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0} for i in range(4)]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return validate_dataset(tmp_path, ann, workers=1)


def test_duplicate_category_names_are_warned_about(tmp_path):
    r = _dataset(tmp_path, [{"id": i, "name": "shape"} for i in (1, 2, 3, 4)])
    assert r.ok and r.count("duplicate_category_name") == 1
    assert "categories 1, 2, 3, 4 are all named 'shape'" in str(r.warnings["duplicate_category_name"].examples[0])


def test_names_differing_only_by_case_or_whitespace_are_warned_about(tmp_path):
    r = _dataset(tmp_path, [{"id": 1, "name": "Car"}, {"id": 2, "name": "car "}, {"id": 3, "name": "bus"},
                            {"id": 4, "name": "big  truck"}, {"id": 5, "name": "Big truck"}])
    assert r.ok and r.count("similar_category_names") == 2 and r.count("duplicate_category_name") == 0
    text = " ".join(str(f) for f in r.warnings["similar_category_names"].examples)
    assert "1 'Car', 2 'car '" in text and "4 'big  truck', 5 'Big truck'" in text


def test_distinct_names_give_no_warning(tmp_path):
    r = _dataset(tmp_path, [{"id": 1, "name": "car"}, {"id": 2, "name": "cart"}])
    assert r.ok and not r.warnings


def test_an_image_listed_twice_under_two_spellings_is_warned_about(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "./a.png", "width": 40, "height": 30}]
    r = _dataset(tmp_path, [{"id": 1, "name": "car"}], images)
    assert r.count("duplicate_file_name") == 1
    assert "also used by image 1" in str(r.warnings["duplicate_file_name"].examples[0])


def test_an_image_id_listed_twice_is_fatal(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 1, "file_name": "b.png", "width": 40, "height": 30}]
    r = _dataset(tmp_path, [{"id": 1, "name": "car"}], images)
    assert not r.ok and r.count("duplicate_image_id") == 1


def test_quoted_values_are_capped(tmp_path):
    long = "x" * 5000
    images = [{"id": 1, "file_name": "a.png", "width": long, "height": 30}]
    r = _dataset(tmp_path, [{"id": 1, "name": "car"}], images)
    message = str(r.errors["wrong_type"].examples[0])
    assert len(message) < 400 and "more characters)" in message


def test_every_check_is_a_named_function_of_the_list():
    assert [c.__name__ for c in validate.CHECKS] == [
        "check_sections", "check_categories", "check_category_names", "check_image_entries", "check_image_files",
        "check_annotations", "check_boxes_left"]
    for kind in validate.AMBIGUOUS_KINDS:
        assert validate.KINDS[kind][0] == validate.WARNING
