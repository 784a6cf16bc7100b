"""hdetr bench ablation --regime paper: the regime's settings follow the paper, its --quick variant runs
every scheme end to end (tiny sizes here) and resumes, and the toy regime keeps its published runs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import ablation, ablation_setup, regimes
from benchmarks.__main__ import build_parser
from hdetr.errors import UserError
from support.paths import REPO

TINY = [
    "--set", "train_images=8", "--set", "val_images=4", "--set", "image_size=64", "--set", "train_scales=64",
    "--set", "epochs=2", "--set", "lr_drop=1", "--set", "batch_size=4", "--set", "dec_layers=2",
    "--set", "enc_layers=1", "--set", "one2many_layers=1", "--set", "dim_feedforward=64", "--set", "hidden_dim=64",
    "--set", "nheads=2", "--set", "num_queries=5", "--set", "num_queries_one2many=25", "--set", "k=2",
]
SCHEME_KEYS = {"AP", "AP50", "AP75", "curve", "train_s_per_iter", "peak_mem_mb", "infer_img_per_s", "gflops"}


def _args(tmp_path, *extra):
    return build_parser().parse_args(["ablation", "--regime", "paper", "--quick", "--jobs", "0", "--threads", "1", "--device", "cpu",
        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *TINY, *extra,
    ])


@pytest.mark.slow
def test_paper_regime_quick_runs_every_scheme_and_resumes(tmp_path, capsys):
    assert ablation.run_ablation(_args(tmp_path)) == 0
    doc = json.loads((tmp_path / "out" / "ablation_paper_quick.json").read_text())
    assert list(doc["schemes"]) == list(ablation.SCHEMES)  # every scheme ran
    cfg = doc["config"]
    assert cfg["regime"] == "paper" and cfg["command"].startswith("hdetr bench ablation --regime paper --quick")
    assert cfg["budget"]["dataset"] == "coco_like" and cfg["dataset_summary"]["style"] == "coco_like"
    assert cfg["queries"] == {"baseline": [5, 5], "baseline_more_queries": [30, 30], "branch": [30, 5],
                              "epoch": [30, 30], "layer": [30, 30]}
    assert "model.backbone=efficientnet_lite0" in cfg["common_overrides"]
    assert "model.backbone_weights=efficientnet_lite0_imagenet" in cfg["common_overrides"]
    for name, s in doc["schemes"].items():
        assert set(s) == SCHEME_KEYS, name
        assert len(s["AP"]) == 1 and 0.0 <= s["AP"][0] <= 1.0
        assert [p[0] for p in s["curve"]] == [2, 4], name  # evaluated after each of 2 epochs of 2 iterations
        assert s["train_s_per_iter"] > 0 and s["gflops"] > 0 and s["infer_img_per_s"] > 0
    assert set(cfg["train_s_per_iter_side_by_side"]) == set(ablation.SCHEMES)
    nms = json.loads((tmp_path / "out" / "ablation_paper_quick_nms.json").read_text())
    assert set(nms["schemes"]) == set(ablation.SCHEMES)
    assert (tmp_path / "out" / "ablation_paper_quick.png").stat().st_size > 0
    capsys.readouterr()

    assert ablation.run_ablation(_args(tmp_path)) == 0  # resumable: every finished run is found
    assert f"{len(ablation.SCHEMES)} finished run(s) found, skipped" in capsys.readouterr().out


def test_paper_regime_follows_the_paper():
    from hdetr.config import load_config
    from hdetr.hybrid import matching_plan
    from hdetr.models import build_model

    b = regimes.PAPER
    assert b.seeds >= 3
    assert b.num_queries_one2many == 5 * b.num_queries and b.k == 6  # N : M = 1 : 5, K = 6
    assert b.lr_drop / b.epochs == pytest.approx(11 / 12)
    assert (b.dec_layers, b.one2many_layers) == (6, 4)  # L1 = 4, L2 = 2
    assert ablation_setup.tokens(min(b.train_scales)) >= b.num_queries + b.num_queries_one2many
    cfgs = {s: load_config(ablation.PRESET, ablation.run_overrides(s, 0, b, "DATA")) for s in ablation.SCHEMES}
    c = cfgs["baseline"]
    assert c.model.backbone == "efficientnet_lite0" and c.model.backbone_weights == "efficientnet_lite0_imagenet"
    assert c.train.lr_backbone == pytest.approx(0.1 * c.train.lr)
    assert c.model.num_classes == 6 and c.train.lr_drop == b.lr_drop
    assert cfgs["baseline_more_queries"].model.num_queries == b.num_queries + b.num_queries_one2many
    e = cfgs["epoch"]
    assert [ep for ep in range(b.epochs) if max(matching_plan(e, ep).layer_repeats) > 1] == list(range(8))  # rho = 2/3
    assert matching_plan(cfgs["layer"], 0).layer_repeats == (6,) * 4 + (1,) * 2
    # The ImageNet weights are loaded and the stem is frozen, as the official R50's.
    model = build_model(c)
    body = model.backbone.body if hasattr(model.backbone, "body") else model.backbone[0].body
    assert not any(p.requires_grad for p in body.conv_stem.parameters())
    assert any(p.requires_grad for p in body.blocks[-1].parameters())


def test_toy_regime_keeps_the_published_runs():
    # Its budget key (the run folders) is the one of the committed results, and so are its file names.
    published = json.loads((REPO / "benchmarks/results/ablation.json").read_text())
    assert regimes.regime_budget("toy") == ablation_setup.DEFAULT
    assert ablation_setup.DEFAULT.key() == published["config"]["budget_key"]
    assert ablation.regime_output_name("toy", False) == "ablation"
    assert regimes.regime_budget("paper").key() != ablation_setup.DEFAULT.key()
    assert ablation.regime_output_name("paper", True) == "ablation_paper_quick"


def test_paper_regime_keeps_its_run_folders_and_takes_a_smallest_object_size(tmp_path):
    # The committed paper-regime results name their budget key; a new setting at its default keeps it.
    published = json.loads((REPO / "benchmarks/results/ablation_paper.json").read_text())
    paper = regimes.regime_budget("paper")
    assert paper.key() == published["config"]["budget_key"]
    bigger = ablation._apply_settings(paper, ["min_object=0.125"])
    assert bigger.min_object == 0.125 and bigger.key() != paper.key()
    ablation.check_budget(bigger)
    data = ablation._ensure_dataset(tmp_path, dataclasses.replace(bigger, train_images=8, val_images=2))
    assert data.name.endswith("-min0.125")
    assert json.loads((data / "complete.json").read_text())["min_object_size"] == 0.125
    for bad in (dataclasses.replace(paper, min_object=0.6), dataclasses.replace(ablation_setup.DEFAULT, min_object=0.1)):
        with pytest.raises(UserError, match="min_object"):
            ablation.check_budget(bad)
