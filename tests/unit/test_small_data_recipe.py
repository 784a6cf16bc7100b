"""The small-data recipe: settings chosen from a dataset's annotations (hdetr.data.recipe)."""

from __future__ import annotations

import json

import pytest

from hdetr.config import load_config
from hdetr.data.recipe import choose, data_stats, overrides


def _dataset(root, images: int, objects_per_image, side: int, box: float, classes: int = 1):
    """COCO JSON (images need not exist: only the annotations are read)."""
    imgs = [{"id": i + 1, "file_name": f"{i}.png", "width": side, "height": side} for i in range(images)]
    anns = []
    for i in range(images):
        for _ in range(objects_per_image(i)):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + len(anns) % classes,
                         "bbox": [1, 1, box, box * 1.5], "area": box * box * 1.5, "iscrowd": 0})
    cats = [{"id": c + 1, "name": f"c{c}"} for c in range(classes)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    (root / "images").mkdir(exist_ok=True)
    return path


def _values(choices):
    return {c.key: c.value for c in choices}


def test_many_small_objects_get_queries_and_a_larger_input(tmp_path):
    ann = _dataset(tmp_path, 40, lambda i: 45 if i == 0 else 10, side=200, box=6.0)
    s = data_stats(f"{tmp_path / 'images'}:{ann}")
    assert (s.images, s.max_objects, s.median_object, s.classes) == (40, 45, 6.0, 1)
    _, choices = choose(f"{tmp_path / 'images'}:{ann}", batch_size=4, val_images=10)
    v = _values(choices)
    assert v["model.num_queries"] == 270  # 6 x 45
    assert v["hybrid.num_queries_one2many"] == 270  # as many as the one-to-one (K = 6 copies of 10 objects fit)
    assert v["model.topk"] == 100  # 2 x 45 = 90, raised to 100
    # Median object 6 px: x4 would give it 3 stride-8 cells; the scale is capped at x2 of 200 px.
    assert v["data.val_scale"] == 384 and max(v["data.train_scales"]) <= v["data.max_size"]
    assert v["train.epochs"] == 200 and v["train.lr_drop"] == 183  # 10 steps an epoch -> the 200 cap
    assert v["train.eval_every"] == 1
    cfg = load_config("small_data", overrides(choices))  # the choices make a valid config
    assert cfg.model.num_queries == 270 and cfg.data.val_scale == 384
    assert all(c.why for c in choices)


def test_large_objects_get_a_smaller_cheaper_input_and_few_epochs_on_more_images(tmp_path):
    ann = _dataset(tmp_path, 2000, lambda i: 3, side=640, box=120.0, classes=3)
    _, choices = choose(str(ann), batch_size=4, val_images=2000)
    v = _values(choices)
    assert v["model.num_queries"] == 100 and v["model.num_classes"] == 3  # 6 x 3 = 18, raised to 100
    assert v["hybrid.num_queries_one2many"] == 100  # as many as the one-to-one
    assert v["data.val_scale"] == 320  # x0.5, the smallest scale allowed
    assert v["train.epochs"] == 12  # 500 steps an epoch: 6 epochs for 3000 steps, raised to 12
    assert v["train.eval_every"] == 4  # 0.35 x 2000 / 2000 / 0.1 = 3.5 -> 4
    load_config("small_data", overrides(choices))


def test_queries_stop_at_the_official_300_and_the_one2many_group_makes_room_for_k_copies(tmp_path):
    ann = _dataset(tmp_path, 20, lambda i: 80, side=400, box=10.0)
    v = _values(choose(str(ann), batch_size=4)[1])
    assert v["model.num_queries"] == 300  # 6 x 80 = 480, capped
    assert v["hybrid.num_queries_one2many"] == 480  # room for K = 6 copies of 80: 480 > 300
    assert v["model.topk"] == 160  # twice the most objects of one image
    ann = _dataset(tmp_path, 20, lambda i: 120, side=400, box=10.0)
    assert _values(choose(str(ann), batch_size=4)[1])["hybrid.num_queries_one2many"] == 720  # 6 x 120


def test_missing_dataset_is_a_user_error(tmp_path):
    from hdetr.errors import UserError

    with pytest.raises(UserError, match="nowhere"):
        choose(str(tmp_path / "nowhere"))


def test_hdetr_train_small_data_puts_the_data_choices_under_the_users_own(tmp_path):
    from hdetr.data.recipe import preset_overrides

    ann = _dataset(tmp_path, 40, lambda i: 45 if i == 0 else 10, side=200, box=6.0)
    spec = f"{tmp_path / 'images'}:{ann}"
    items, chosen = preset_overrides([f"data.train={spec}"])
    v = _values(chosen)
    assert v["model.num_queries"] == 270 and v["train.epochs"] == 200
    assert items[-1] == f"data.train={spec}"  # the user's last: their keys win
    cfg = load_config("small_data", items)
    assert (cfg.model.num_queries, cfg.hybrid.num_queries_one2many, cfg.data.val_scale) == (270, 270, 384)

    # A key the user sets is theirs: not chosen, not reported; what follows from it is derived from it.
    items, chosen = preset_overrides([f"data.train={spec}", "model.num_queries=50", "train.epochs=24",
                                      "data.val_scale=256"])
    v = _values(chosen)
    assert not {"model.num_queries", "train.epochs", "data.val_scale"} & set(v)
    assert v["hybrid.num_queries_one2many"] == 60 and v["model.topk"] == 50  # 6 copies of 10 > 50; 50 queries x 1 class
    assert v["train.lr_drop"] == 22 and 256 in v["data.train_scales"]  # 11/12 of 24 epochs; around 256 px
    cfg = load_config("small_data", items)
    assert (cfg.model.num_queries, cfg.train.epochs, cfg.train.lr_drop, cfg.data.val_scale) == (50, 24, 22, 256)

    # No training set given: nothing is chosen (training then refuses with its own message).
    assert preset_overrides(["train.epochs=3"]) == (["train.epochs=3"], [])


def test_malformed_annotations_are_left_to_the_data_check(tmp_path):
    """The statistics only guide choices: entries that are not well-formed are skipped (no traceback), and
    with nothing usable nothing is chosen, so the data check that runs next names the file and problem."""
    from hdetr.data.recipe import preset_overrides

    (tmp_path / "images").mkdir()
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}, {"id": 2, "file_name": "b.png"},
                      {"id": [3], "width": 5, "height": 5}, "junk", {"id": 4, "width": True, "height": 50}],
           "annotations": [{"id": 1, "image_id": 1, "bbox": "abc"}, {"id": 2, "image_id": 1, "bbox": [0, 0, 10, 20]},
                           {"id": 3, "image_id": 1, "bbox": [0, 0, float("nan"), 5]}, 7,
                           {"id": 4, "image_id": 2, "bbox": [0, 0, 9, 9]}, {"id": 5, "image_id": [1], "bbox": [0, 0, 9, 9]}],
           "categories": "oops"}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    s = data_stats(f"{tmp_path / 'images'}:{ann}")
    assert (s.images, s.boxes, s.max_objects, s.median_object, s.classes) == (1, 1, 1, 10.0, 0)
    ann.write_text("{not json")
    spec = f"data.train={tmp_path / 'images'}:{ann}"
    assert preset_overrides([spec]) == ([spec], [])


def test_check_data_with_small_data_reports_the_settings_training_would_choose(tmp_path, capsys):
    """``hdetr check-data DATA --config small_data`` checks the data against the queries that ``hdetr train
    small_data`` would use on it (the recipe's), not the preset's fallbacks; the user's keys stay theirs."""
    from hdetr.cli import main

    ann = _dataset(tmp_path, 40, lambda i: 45 if i == 0 else 10, side=200, box=6.0)
    spec = f"{tmp_path / 'images'}:{ann}"
    report = tmp_path / "report.json"
    assert main(["check-data", spec, "--no-images", "--config", "small_data", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "data chose model.num_queries=270: up to 45 objects in one image" in out
    assert "model (small_data): 270 one-to-one queries, 1 classes, topk 100" in out
    model = json.loads(report.read_text())["model"]
    assert model["num_queries"] == 270
    assert {c["key"]: c["value"] for c in model["data_choices"]}["data.val_scale"] == 384

    assert main(["check-data", spec, "--no-images", "--config", "small_data", "model.num_queries=40"]) == 0
    out = capsys.readouterr().out
    assert "data chose model.num_queries" not in out and "data chose model.topk=40" in out
    assert "45 objects, the model has 40 one-to-one queries" in out

    assert main(["check-data", spec, "--no-images", "--config", "small_data", "--no-recipe"]) == 0
    out = capsys.readouterr().out
    assert "data chose" not in out and "model (small_data): 100 one-to-one queries" in out
