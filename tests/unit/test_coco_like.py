"""The COCO-like synthetic scenes: object counts and sizes as COCO's, deterministic, usable by hdetr."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hdetr.data import coco_like
from hdetr.data.synthetic import write_synthetic_dataset


def test_counts_and_sizes_are_coco_like():
    side = 128
    counts, sides = [], []
    for i in range(240):
        img, objects = coco_like.render(np.random.default_rng([3, 0, i]), side, side)
        assert img.size == (side, side)
        counts.append(len(objects))
        sides += [max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) / side for o in objects]
        assert {o["category_id"] for o in objects} <= {c["id"] for c in coco_like.CATEGORIES}
    counts, sides = np.array(counts), np.array(sides)
    assert 5.5 <= counts.mean() <= 8.5  # COCO: ~7 objects per image
    assert 0.08 <= (counts >= 20).mean() <= 0.25  # a share of crowded images
    assert (counts == 0).any() and counts.max() <= coco_like.CROWDED_OBJECTS[1]
    assert (sides < 0.1).mean() > 0.2 and (sides > 0.3).mean() > 0.05  # small and large objects


def test_objects_are_textured():
    # Most object fills carry a texture (two colours), not one flat colour with noise.
    spread = [coco_like._texture(np.random.default_rng(i), 32, 32, 24.0).reshape(-1, 3).std(0).mean()
              for i in range(40)]
    assert np.mean(np.array(spread) > 25) > 0.5


def test_writer_is_deterministic_and_reports_the_statistics(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", num_train=12, num_val=4, image_size=64, seed=2, style="coco_like")
    b = write_synthetic_dataset(tmp_path / "b", num_train=12, num_val=4, image_size=64, seed=2, style="coco_like")
    for split in ("train", "valid"):
        files = sorted(p.name for p in (tmp_path / "a" / split).iterdir())
        for name in files:
            assert (tmp_path / "a" / split / name).read_bytes() == (tmp_path / "b" / split / name).read_bytes()
    doc = json.loads((tmp_path / "a" / "train" / "_annotations.coco.json").read_text())
    assert len(doc["categories"]) == len(coco_like.CATEGORIES)
    assert a["train"]["objects_per_image"] == len(doc["annotations"]) / 12
    assert a["style"] == b["style"] == "coco_like"
    other = write_synthetic_dataset(tmp_path / "c", num_train=12, num_val=4, image_size=64, seed=3, style="coco_like")
    assert other["train"]["num_annotations"] != a["train"]["num_annotations"] or \
        (tmp_path / "c" / "train" / "train_000000.jpg").read_bytes() != (tmp_path / "a" / "train" / "train_000000.jpg").read_bytes()


def test_cli_style_option(tmp_path, capsys):
    from hdetr.cli import main

    assert main(["synth", str(tmp_path / "d"), "--style", "coco_like", "--train", "4", "--val", "2", "--size", "64"]) == 0
    assert "per image" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["synth", str(tmp_path / "e"), "--style", "nope"])
    assert e.value.code == 2


def test_a_smallest_object_size_raises_the_small_ones_only(tmp_path):
    side, smallest = 128, 0.125
    default, raised = [], []
    for i in range(120):
        for sizes, kwargs in ((default, {}), (raised, {"min_size": smallest})):
            _, objects = coco_like.render(np.random.default_rng([3, 0, i]), side, side, **kwargs)
            sizes += [max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) / side for o in objects]
    default, raised = np.array(default), np.array(raised)
    assert (default < 0.1).mean() > 0.2
    # A box is the object's extent, at least its side up to rounding and the image border.
    assert (raised < 0.1).mean() < 0.05 and np.median(raised) > np.median(default)
    assert raised.max() <= default.max() + 0.05  # the large ones stay as large
    assert coco_like.size_range((0.04, 0.14), smallest) == (0.125, 0.2)
    assert coco_like.size_range((0.04, 0.5), 0.0) == (0.04, 0.5)
    summary = write_synthetic_dataset(tmp_path / "d", 4, 2, side, seed=0, style="coco_like", min_object_size=smallest)
    assert summary["min_object_size"] == smallest
    with pytest.raises(ValueError, match="coco_like"):
        write_synthetic_dataset(tmp_path / "e", 4, 2, side, seed=0, style="shapes", min_object_size=smallest)
