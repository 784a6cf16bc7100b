from __future__ import annotations

import pytest

from hdetr.config import ConfigError, build_config, load_config


@pytest.mark.parametrize("override,names", [
    ("model.hidden_dm=256", "model.hidden_dm"),
    ("hybrid.k=0", "hybrid.k"),
    ("hybrid.epoch_ratio=1.5", "hybrid.epoch_ratio"),
    ("hybrid.scheme=sometimes", "hybrid.scheme"),
    ("model.num_queries=abc", "model.num_queries"),
    ("model.two_stage=maybe", "model.two_stage"),
    ("model.hidden_dim=128", "model.hidden_dim"),
    ("train.amp=fp8", "train.amp"),
])
def test_bad_values_name_the_key(override, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        build_config({}, [override])


def test_layer_scheme_needs_l1_plus_l2_equal_to_decoder_layers():
    with pytest.raises(ConfigError, match="one2many_layers"):
        build_config({}, ["hybrid.scheme=layer", "hybrid.one2many_layers=7", "model.dec_layers=6"])
    cfg = build_config({}, ["hybrid.scheme=layer", "hybrid.one2many_layers=6"])
    assert cfg.hybrid.one2many_layers == 6


def test_topk_cannot_exceed_queries_times_classes():
    with pytest.raises(ConfigError, match="model.topk"):
        build_config({}, ["model.num_queries=2", "model.num_classes=3", "model.topk=10"])


def test_presets_load_with_official_hyperparameters():
    cfg = load_config("r50_hybrid_branch_12ep")
    assert (cfg.model.num_queries, cfg.hybrid.num_queries_one2many, cfg.hybrid.k, cfg.hybrid.lambda_one2many) == (300, 1500, 6, 1.0)
    assert (cfg.model.dropout, cfg.model.dim_feedforward, cfg.model.mixed_selection, cfg.model.look_forward_twice) == (0.0, 2048, True, True)
    assert (cfg.train.lr, cfg.train.lr_backbone, cfg.train.lr_linear_proj_mult, cfg.train.weight_decay) == (2e-4, 2e-5, 0.1, 1e-4)
    assert (cfg.train.clip_max_norm, cfg.train.epochs, cfg.train.lr_drop) == (0.1, 12, 11)
    assert load_config("r50_hybrid_branch_36ep").train.lr_drop == 30
    assert load_config("swin_l_baseline_12ep").hybrid.scheme == "none"


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="r50_hybrid_branch_12ep"):
        load_config("r51_nothing")
