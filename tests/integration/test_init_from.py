"""train.init_from, train.freeze: what is copied, what starts fresh, and that the run stays exact."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from hdetr.weights import load_weights
from hdetr.config import ConfigError, load_config
from hdetr.engine.init_from import build_model_for_source, init_from
from hdetr.run_folder import INIT_REPORT as REPORT_FILE
from hdetr.engine.sampling import seed_everything
from hdetr.engine.train import Trainer, train
from hdetr.errors import UserError
from hdetr.models import build_model
from support.engine_helpers import assert_same_tensors, load_state, tiny_overrides
from support.finetune_helpers import relabelled_dataset

NO_EVAL = ["train.eval_every=10"]
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


@pytest.fixture(scope="module")
def source_run(synth_data, module_dir):
    """A tiny detector trained for 3 steps on the synthetic shapes (circle, square, triangle, cross)."""
    out = module_dir("source")
    train(load_config(None, tiny_overrides(synth_data, "train.max_iters=3", *NO_EVAL)), out, progress=False)
    return out


@pytest.fixture(scope="module")
def target_data(synth_data, module_dir):
    return relabelled_dataset(synth_data, module_dir("target") / "data")


def _cfg(data, *extra):
    return load_config(None, tiny_overrides(data, *NO_EVAL, *extra))


def _fresh(cfg):
    """The model a run from scratch starts with (the trainer seeds, then builds)."""
    seed_everything(cfg.train.seed)
    return build_model(cfg).state_dict()


def test_class_rows_by_name_and_map_are_bit_identical_and_the_rest_start_fresh(source_run, target_data, tmp_path):
    src = load_weights(source_run).state
    cfg = _cfg(target_data, f"train.init_from={source_run}", "train.init_class_map={car: Circle}",
               "model.num_queries=5", "hybrid.num_queries_one2many=40",
               "model.topk=15")  # 5 queries x the target's 3 classes (validated once the data is read)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    mine, fresh = trainer.model.state_dict(), _fresh(cfg)
    assert trainer.cmap.names == ["Person", "SQUARE", "car"]
    heads = sorted(k for k in mine if k.startswith("class_heads."))
    assert len(heads) == 2 * (2 + 1)  # weight + bias of 2 decoder layers and the two-stage encoder
    for k in heads:
        assert torch.equal(mine[k][1], src[k][1])  # SQUARE <- square (by name, case-insensitive)
        assert torch.equal(mine[k][2], src[k][0])  # car <- circle (train.init_class_map)
        assert torch.equal(mine[k][0], fresh[k][0])  # Person: no source class, a fresh head's row
        assert not torch.equal(mine[k][0], src[k][0])
        if k.endswith("bias"):
            assert mine[k][0].item() == pytest.approx(PRIOR_BIAS)
    q, sq, fq = mine["query_embedding.weight"], src["query_embedding.weight"], fresh["query_embedding.weight"]
    assert q.shape == (45, 256) and sq.shape == (30, 256)
    assert torch.equal(q[:5], sq[:5])  # one-to-one: the first 5 of the source's 10
    assert torch.equal(q[5:25], sq[10:30])  # one-to-many: all 20 of the source's
    assert torch.equal(q[25:], fq[25:])  # the source has no more: fresh rows
    # Everything else fits and is loaded as is.
    for k in mine:
        if not k.startswith(("class_heads.", "query_embedding.")):
            assert torch.equal(mine[k], src[k]), k

    report = json.loads((tmp_path / "run" / REPORT_FILE).read_text())
    c = report["counts"]
    assert (c["loaded"], c["partly_copied"], c["reinitialised"], c["unused"]) == (len(mine) - 7, 7, 0, 0)
    assert [(e["class"], e["from"]) for e in report["classes"]["kept"]] == [("SQUARE", "square"), ("car", "circle")]
    assert report["classes"]["new"] == ["Person"]


def test_one2many_group_from_the_one2one_embeddings(source_run, target_data, tmp_path):
    src = load_weights(source_run).state["query_embedding.weight"]
    cfg = _cfg(target_data, f"train.init_from={source_run}", "train.init_one2many=one2one", "model.num_queries=10",
               "hybrid.num_queries_one2many=25")
    q = Trainer(cfg, tmp_path, progress=False).model.state_dict()["query_embedding.weight"]
    assert torch.equal(q[:10], src[:10])
    assert torch.equal(q[10:], src[:10].repeat(3, 1)[:25])


def test_every_tensor_is_accounted_for_when_parts_are_left_out(source_run, target_data, tmp_path):
    loaded = load_weights(source_run)
    cfg = _cfg(target_data, "train.init_parts=backbone", "model.enc_layers=2", "model.num_classes=3")
    model = build_model(cfg)
    report = init_from(model, cfg, ["Person", "SQUARE", "car"], loaded)
    names = list(model.state_dict())
    done = report["loaded"] + [e["name"] for e in report["partly_copied"] + report["reinitialised"]]
    assert sorted(done) == sorted(names)
    assert all(k.startswith("backbone.") for k in report["loaded"]) and report["loaded"]
    used = set(report["loaded"]) | {e["name"] for e in report["partly_copied"]}
    assert sorted(used | {e["name"] for e in report["unused"]}) == sorted(loaded.state)
    assert not used & {e["name"] for e in report["unused"]}


@pytest.mark.parametrize("override,tensor,theirs,mine", [
    ("model.num_feature_levels=3", "transformer.level_embed", "[4, 256]", "[3, 256]"),
    ("model.dim_feedforward=32", "transformer.encoder_layers.0.ffn.linear1.weight", "[64, 256]", "[32, 256]"),
])
def test_unbridgeable_mismatch_names_the_first_tensor_and_both_shapes(source_run, target_data, override, tensor,
                                                                       theirs, mine):
    cfg = _cfg(target_data, override)
    with pytest.raises(UserError) as e:
        init_from(build_model(cfg), cfg, ["a"], load_weights(source_run))
    assert f"{tensor} has shape {theirs} there and {mine} here" in str(e.value)


def test_another_backbone_is_refused_unless_left_out(source_run, target_data):
    cfg = _cfg(target_data, "model.backbone=resnet18")
    with pytest.raises(UserError, match="its backbone is tiny, this model's is resnet18"):
        init_from(build_model(cfg), cfg, ["a"], load_weights(source_run))


def test_bad_class_map_and_parts_are_refused(source_run, target_data, tmp_path):
    cfg = _cfg(target_data, f"train.init_from={source_run}", "train.init_class_map={car: lorry}")
    with pytest.raises(UserError, match="'lorry' is not a class of"):
        Trainer(cfg, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="train.freeze: unknown part 'neck'"):
        _cfg(target_data, "train.freeze=backbone+neck")


def _run(data, out, source, *extra, resume=False):
    cfg = _cfg(data, f"train.init_from={source}", "train.epochs=3", "train.lr_drop=1", "model.dropout=0.1", *extra)
    return train(cfg, out, resume=resume, progress=False)


def test_resume_after_init_from_is_bit_exact_and_does_not_reload_the_source(source_run, target_data, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(source_run, source)
    _run(target_data, tmp_path / "full", source, "train.max_iters=6")
    _run(target_data, tmp_path / "cut", source, "train.max_iters=3")
    report = (tmp_path / "cut" / REPORT_FILE).read_text()
    shutil.rmtree(source)  # --resume must not need it: the run's own checkpoint holds the weights
    _run(target_data, tmp_path / "cut", source, "train.max_iters=6", resume=True)
    full, cut = load_state(tmp_path / "full" / "last.pt"), load_state(tmp_path / "cut" / "last.pt")
    assert cut["step"] == 6
    assert_same_tensors(full["model"], cut["model"])
    for a, b in zip(full["optimizer"]["state"].values(), cut["optimizer"]["state"].values()):
        assert_same_tensors(a, b)
    assert (tmp_path / "cut" / REPORT_FILE).read_text() == report


def test_frozen_parts_stay_bit_identical_and_are_not_in_the_optimizer(source_run, target_data, tmp_path):
    src = load_weights(source_run).state
    _run(target_data, tmp_path, source_run, "train.max_iters=3", "train.freeze=backbone+encoder", "train.ema=true")
    ckpt = load_state(tmp_path / "last.pt")
    model = build_model(_cfg(target_data, "model.num_classes=3"))
    frozen = [n for n in dict(model.named_parameters()) if n.startswith(("backbone.", "input_projections.",
                                                                         "transformer.level_embed",
                                                                         "transformer.encoder_layers."))]
    assert len(frozen) > 20
    for n in frozen:
        assert torch.equal(ckpt["model"][n], src[n]), n
        assert torch.equal(ckpt["ema"]["module"][n], src[n]), n
    trainable = len(list(model.parameters())) - len(frozen)
    assert sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"]) == trainable
    assert not torch.equal(ckpt["model"]["transformer.decoder_layers.0.ffn.linear1.weight"],
                           src["transformer.decoder_layers.0.ffn.linear1.weight"])  # the rest trained


def test_resume_refuses_another_freeze(source_run, target_data, tmp_path):
    _run(target_data, tmp_path, source_run, "train.max_iters=1", "train.freeze=backbone")
    with pytest.raises(UserError, match="train.freeze"):
        _run(target_data, tmp_path, source_run, "train.max_iters=2", resume=True)


def test_ema_copies_parameters_that_do_not_train():
    from hdetr.engine.ema import ModelEMA

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    model.weight.requires_grad_(False)
    ema = ModelEMA(model, decay=0.9, warmup=1)
    for _ in range(20):
        with torch.no_grad():
            model.bias.add_(1.0)
        ema.update(model)
    assert torch.equal(ema.module.weight, model.weight)  # d * w + (1 - d) * w would drift by rounding
    assert not torch.equal(ema.module.bias, model.bias)  # trained parameters are averaged


def test_finetune_presets_and_class_map_overrides_load():
    cfg = load_config("r50_finetune", ["train.init_from=x.pth", "train.init_class_map={bike: bicycle}",
                                       "train.init_class_map.lorry=truck"])
    assert (cfg.train.lr, cfg.train.lr_backbone, cfg.train.grad_accum, cfg.train.epochs) == (1e-4, 1e-5, 4, 50)
    assert cfg.train.init_class_map == {"bike": "bicycle", "lorry": "truck"}
    assert cfg.hybrid.num_queries_one2many == 1500
    assert load_config("synthetic_finetune").model.backbone == "tiny"
    with pytest.raises(ConfigError, match="train.init_class_map: expected a mapping"):
        load_config(None, ["train.init_class_map=[a, b]"])
    with pytest.raises(ConfigError, match="train.init_one2many must be one of source, one2one"):
        load_config(None, ["train.init_one2many=copy"])


def test_a_missing_source_stops_before_the_data_check(target_data, tmp_path, capsys):
    with pytest.raises(UserError, match="no_such.pth: no such checkpoint"):
        Trainer(_cfg(target_data, f"train.init_from={tmp_path / 'no_such.pth'}"), tmp_path / "run", progress=False)
    assert "data check" not in capsys.readouterr().out


def test_init_from_bringing_the_backbone_skips_its_imagenet_download(synth_data, tmp_path, monkeypatch, capsys):
    import torchvision.models._api as torchvision_weights

    from hdetr.weights import save_model
    from hdetr.models import backbone_weights

    def offline(*args, **kwargs):
        raise OSError("the network is cut off in this test")

    monkeypatch.setattr(torchvision_weights, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(backbone_weights, "_reachable", lambda *a, **kw: False)
    names = ["circle", "square", "triangle", "cross"]
    src_cfg = _cfg(synth_data, "model.backbone=resnet18", "model.num_classes=4")
    seed_everything(123)
    src = build_model(src_cfg).state_dict()
    save_model(tmp_path / "source", src_cfg, src, names)
    common = ["model.backbone=resnet18", "model.pretrained_backbone=true", f"train.init_from={tmp_path / 'source'}"]

    trainer = Trainer(_cfg(synth_data, *common), tmp_path / "run", progress=False)
    assert "model.pretrained_backbone=true: not loaded, train.init_from=" in capsys.readouterr().out
    mine = trainer.model.state_dict()
    backbone = [k for k in mine if k.startswith("backbone.")]
    assert backbone and all(torch.equal(mine[k], src[k]) for k in backbone)
    # Trained as with the ImageNet weights: their stem and layer1 stay frozen.
    frozen = sorted(n for n, p in trainer.model.named_parameters() if not p.requires_grad)
    assert frozen and all(n.startswith(("backbone.body.conv1.", "backbone.body.layer1.")) for n in frozen)
    assert any(n.startswith("backbone.body.layer1.") for n in frozen)
    # A resumed run takes every weight from its checkpoint: it does not try the download either, and
    # continues from the very weights it saved.
    short = ["train.max_iters=1"]
    Trainer(_cfg(synth_data, *common, *short), tmp_path / "resumed", progress=False).run()
    saved = load_state(tmp_path / "resumed" / "last.pt")["model"]
    resumed = Trainer(_cfg(synth_data, *common, *short), tmp_path / "resumed", resume=True, progress=False)
    assert_same_tensors(resumed.model.state_dict(), saved)
    assert not any(p.requires_grad for n, p in resumed.model.named_parameters() if n.startswith("backbone.body.conv1."))
    # Without the source's backbone the ImageNet weights are wanted: the download is tried (and fails here).
    with pytest.raises(UserError, match="cannot download the resnet18 ImageNet weights"):
        Trainer(_cfg(synth_data, *common, "train.init_parts=encoder+decoder+heads"), tmp_path / "run2", progress=False)
    # So they are when the source lacks part of the backbone (init_from would leave that part as built).
    partial = SimpleNamespace(state={k: v for k, v in src.items() if not k.startswith("backbone.body.layer4.")})
    with pytest.raises(UserError, match="cannot download the resnet18 ImageNet weights"):
        build_model_for_source(_cfg(synth_data, *common), partial)
