from __future__ import annotations

import dataclasses

import pytest
import yaml

from hdetr.config import ConfigError, build_config, load_config


@pytest.mark.parametrize("override,names", [
    ("model.hidden_dm=256", "model.hidden_dm"),
    ("hybrid.k=0", "hybrid.k"),
    ("hybrid.epoch_ratio=1.5", "hybrid.epoch_ratio"),
    ("hybrid.scheme=sometimes", "hybrid.scheme"),
    ("model.num_queries=abc", "model.num_queries"),
    ("model.two_stage=maybe", "model.two_stage"),
    ("model.hidden_dim=130", "model.hidden_dim"),
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


SWIN_32 = ["model.backbone=swin", "model.swin.embed_dim=32", "model.swin.depths=[2,2,2,2]",
           "model.swin.num_heads=[1,2,4,8]", "model.swin.window_size=7"]


def test_a_swin_can_be_described_by_its_dimensions():
    cfg = build_config({}, SWIN_32)
    assert (cfg.model.swin.embed_dim, cfg.model.swin.depths, cfg.model.swin.num_heads) == (32, [2, 2, 2, 2], [1, 2, 4, 8])
    assert load_config("swin_l_hybrid_branch_36ep").model.swin.drop_path_rate == 0.5  # official 36-epoch Swin-L
    assert load_config("swin_t_hybrid_branch_12ep").model.swin.drop_path_rate == 0.2


@pytest.mark.parametrize("overrides,match", [
    (["model.backbone=resnet51"], r"model\.backbone must be one of resnet50, .*swin_tiny.*got 'resnet51'"),
    (["model.backbone=swin_tiny", "model.swin.embed_dim=32"], r"model\.swin\.embed_dim .*'swin_tiny' fixes"),
    (SWIN_32[:-1], r"model\.swin\.window_size must be set"),
    (SWIN_32 + ["model.swin.depths=[2,2,2]"], r"model\.swin\.depths and model\.swin\.num_heads must have 4"),
    (SWIN_32 + ["model.swin.num_heads=[3,6,12,24]"], r"model\.swin\.num_heads\[0\] \(3\) must divide .* 32"),
    (SWIN_32 + ["model.pretrained_backbone=true"], r"model\.pretrained_backbone: backbone 'swin' has no pretrained"),
    (["model.backbone=tiny", "model.pretrained_backbone=true"], r"backbone 'tiny' has no pretrained"),
    (["model.swin.drop_path_rate=1.0"], r"model\.swin\.drop_path_rate"),
])
def test_bad_backbone_settings_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config({}, overrides)


def test_an_unknown_backbone_is_refused_before_any_data_is_read(tmp_path, capsys):
    from hdetr.cli import main

    code = main(["train", "synthetic_small", "model.backbone=efficientnet_b99", f"data.train={tmp_path / 'absent'}",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "model.backbone must be one of" in err and "absent" not in err
    assert not (tmp_path / "run").exists()


def test_registering_a_backbone_makes_its_name_valid():
    from hdetr.backbones import BACKBONES, BackboneEntry, register_backbone
    from hdetr.models import build_model
    from hdetr.models.backbone import TinyBackbone

    with pytest.raises(ConfigError, match="model.backbone"):
        build_config({}, ["model.backbone=mine"])
    register_backbone(BackboneEntry("mine", lambda m: TinyBackbone()))
    try:
        cfg = build_config({}, ["model.backbone=mine", "model.num_feature_levels=3"])
        assert isinstance(build_model(cfg).backbone, TinyBackbone)
        with pytest.raises(ConfigError, match="has no weights to load"):
            build_config({}, ["model.backbone=mine", "model.backbone_weights=w.pth"])
    finally:
        del BACKBONES["mine"]



def test_two_stage_accepts_narrower_models():
    # The proposal embedding has hidden_dim / 2 sine features per box coordinate (official: 128 at 256),
    # so two-stage is no longer tied to 256.
    cfg = build_config({}, ["model.hidden_dim=128"])
    assert cfg.model.two_stage and cfg.model.hidden_dim == 128


# A loaded config is read-only; a variant is a derived copy (docs/architecture.md).
RICH = ["model.backbone=swin", "model.swin.embed_dim=32", "model.swin.depths=[2,2,2,2]", "model.swin.num_heads=[1,2,4,8]",
        "model.swin.window_size=7", "train.trackers=[mlflow]", "train.checkpoint_activations=[encoder]",
        "train.init_class_map={car: automobile}", "data.train_scales=[480,512]"]


@pytest.mark.parametrize("section,key,value", [
    ("model", "num_classes", 3), ("model.swin", "embed_dim", 64), ("hybrid", "scheme", "none"),
    ("loss", "giou", 1.0), ("train", "lr", 1e-3), ("data", "val_scale", 640), ("", "model", None),
])
def test_a_loaded_config_cannot_be_assigned_to(section, key, value):
    cfg = load_config("synthetic_small")
    target = cfg
    for part in filter(None, section.split(".")):
        target = getattr(target, part)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(target, key, value)
    assert cfg == load_config("synthetic_small")


def test_every_config_class_is_frozen():
    cfg = build_config({}, RICH)
    stack = [cfg]
    while stack:
        obj = stack.pop()
        assert obj.__dataclass_params__.frozen, type(obj).__name__
        stack += [getattr(obj, f.name) for f in dataclasses.fields(obj) if dataclasses.is_dataclass(getattr(obj, f.name))]


def test_a_variant_is_derived_with_dataclasses_replace():
    cfg = load_config("synthetic_small")
    before = cfg.to_dict()
    variant = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=7, attention_impl="reference"))
    assert (variant.model.num_classes, variant.model.attention_impl) == (7, "reference")
    assert variant.train == cfg.train and variant.model.backbone == cfg.model.backbone
    assert cfg.to_dict() == before and cfg.model.num_classes == 4 and cfg.model.attention_impl == "fast"


def test_a_variant_is_derived_with_overrides_on_the_dict():
    cfg = load_config("synthetic_small")
    data = cfg.to_dict()
    variant = build_config(data, ["train.lr=1e-3", "model.swin.drop_path_rate=0.3"])
    assert (variant.train.lr, variant.model.swin.drop_path_rate) == (1e-3, 0.3)
    assert data == cfg.to_dict()  # the dict given is not changed either
    with pytest.raises(ConfigError, match=r"model\.num_queries"):  # a variant built this way is validated
        build_config(data, ["model.num_classes=1", "model.num_queries=0"])


def test_the_yaml_written_into_a_run_folder_reads_back_equal():
    cfg = build_config({}, RICH)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)  # as config.yaml in a run or model folder
    again = build_config(yaml.safe_load(text))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert again.model.swin.depths == [2, 2, 2, 2] and again.train.init_class_map == {"car": "automobile"}


def test_a_config_that_is_not_a_mapping_is_refused():
    with pytest.raises(ConfigError, match="expected a mapping of config sections"):
        build_config(["model", "train"])


def test_queries_that_the_smallest_input_cannot_supply_are_refused_before_training():
    from hdetr.config import encoder_tokens

    # strides 8/16/32 (+64 for a fourth level); fewer levels take the deepest maps
    assert [encoder_tokens(128, n) for n in (1, 2, 3, 4)] == [16, 80, 336, 340]
    assert encoder_tokens(100, 3) == 13 ** 2 + 7 ** 2 + 4 ** 2  # partial cells count, as the convolutions pad
    base = ["model.two_stage=true", "hybrid.scheme=branch", "data.train_scales=[128]", "data.val_scale=128",
            "data.max_size=128", "model.num_feature_levels=3"]
    load_config("synthetic_small", [*base, "model.num_queries=112", "hybrid.num_queries_one2many=224"])  # 336: fits
    with pytest.raises(ConfigError, match=r"112 \+ 225 queries.*128 px image \(data.train_scales\) gives only 336"):
        load_config("synthetic_small", [*base, "model.num_queries=112", "hybrid.num_queries_one2many=225"])
    # the extra group only trains: the validation input needs the one-to-one queries alone
    with pytest.raises(ConfigError, match=r"model.num_queries = 337 queries.*data.val_scale"):
        load_config("synthetic_small", [*base[:2], "data.train_scales=[256]", "data.val_scale=128", "data.max_size=256",
                                        "model.num_queries=337", "hybrid.num_queries_one2many=1"])
    load_config("synthetic_small", [*base, "model.two_stage=false", "model.mixed_selection=false", "model.num_queries=5000"])  # no selection


def test_a_user_file_can_start_from_a_preset_by_name(tmp_path):
    (tmp_path / "mine.yaml").write_text("_base_: small_data\ndata:\n  flips: all\n")
    cfg = load_config(str(tmp_path / "mine.yaml"))
    assert cfg.data.flips == "all" and cfg.model.backbone == load_config("small_data").model.backbone
    # The same name with .yaml, and a file beside the config wins over a preset of the same name.
    (tmp_path / "small_data.yaml").write_text("train: {epochs: 7}\n")
    (tmp_path / "other.yaml").write_text("_base_: small_data.yaml\n")
    assert load_config(str(tmp_path / "other.yaml")).train.epochs == 7
    (tmp_path / "typo.yaml").write_text("_base_: smal_data\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: '_base_' 'smal_data' is neither a file beside it .* presets: .*small_data"):
        load_config(str(tmp_path / "typo.yaml"))
    (tmp_path / "private.yaml").write_text("_base_: _base\n")  # hdetr's own shared base is not a preset
    with pytest.raises(ConfigError, match="neither a file beside it"):
        load_config(str(tmp_path / "private.yaml"))
