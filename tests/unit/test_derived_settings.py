"""Settings derived from the data adapt with a note: model.topk is capped at queries x classes."""

from __future__ import annotations

import pytest

from hdetr.config import ConfigError, build_config, cap_topk, load_config


def test_topk_above_query_class_pairs_is_capped_with_a_note():
    cfg = build_config({}, ["model.num_queries=30", "model.num_classes=4", "model.topk=100"])
    from dataclasses import replace

    two = replace(cfg, model=replace(cfg.model, num_classes=2))  # what training derives from 2-class data
    capped, note = cap_topk(two)
    assert capped.model.topk == 60 and two.model.topk == 100  # a copy; the given config is unchanged
    assert note.startswith("model.topk 100 -> 60") and "30 x 2" in note and "\n" not in note


def test_topk_within_the_pairs_is_left_alone():
    cfg = load_config("synthetic_small")
    same, note = cap_topk(cfg)
    assert same is cfg and note is None


def test_a_config_above_its_own_pairs_is_accepted_and_capped():
    cfg = build_config({}, ["model.num_queries=2", "model.num_classes=3", "model.topk=10"])
    capped, note = cap_topk(cfg)
    assert (cfg.model.topk, capped.model.topk) == (10, 6) and note.startswith("model.topk 10 -> 6")
    with pytest.raises(ConfigError, match=r"model\.topk must be >= 1, got 0"):
        build_config({}, ["model.topk=0"])
