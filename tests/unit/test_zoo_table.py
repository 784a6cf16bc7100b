"""The model zoo's table and its official key lists (hdetr.model_zoo, hdetr.weights.zoo)."""

from __future__ import annotations

import json

import pytest

from hdetr.weights.official import official_key_to_hdetr
from hdetr.weights.zoo import expected_keys
from hdetr.cli import main
from hdetr.config import load_config
from hdetr.errors import UserError
from hdetr.model_zoo import ZOO, get_entry
from support.official_checkpoints import KEYS


def fixture_keys(name: str) -> dict[str, tuple]:
    spec = json.loads((KEYS / f"checkpoint_keys_{name}.json").read_text())
    return {k["name"]: tuple(k["shape"]) for k in spec["keys"]}


def test_the_zoo_holds_every_official_release_with_the_readme_ap():
    assert len(ZOO) == 27 and len({e.file for e in ZOO.values()}) == 25
    # A few lines of the official README's model zoo, as it gives them.
    assert (ZOO["r50_hybrid_branch_36ep"].ap, ZOO["r50_hybrid_branch_36ep"].file) == (
        50.0, "r50_hybrid_branch_lambda1_group6_t1500_dp0_mqs_lft_deformable_detr_plus_iterative_bbox_refinement_"
              "plus_plus_two_stage_36eps.pth")
    assert ZOO["r50_baseline_no_tricks_12ep"].ap == 43.7
    assert ZOO["swin_t_baseline_no_tricks_12ep_run2"].file.endswith("_12eps_2.pth")
    assert ZOO["swin_l_hybrid_branch_36ep"].file.startswith("drop_path0.5_swin_large_")
    assert ZOO["swin_l_hybrid_branch_900q_decay0.05_36ep_topk300"].ap == 57.9
    for backbone in ("resnet50", "swin_tiny", "swin_large"):
        for epochs in (12, 36):
            kinds = {(e.scheme, e.tricks) for e in ZOO.values() if (e.backbone, e.epochs) == (backbone, epochs)}
            assert kinds == {("none", False), ("none", True), ("branch", True)}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_each_entry_config_is_the_official_script(name):
    e = ZOO[name]
    cfg = load_config(e.preset, list(e.overrides))
    m = cfg.model
    assert (m.backbone, m.num_queries, m.topk, cfg.train.epochs) == (e.backbone, e.queries, e.topk, e.epochs)
    assert (m.mixed_selection, m.look_forward_twice, m.dropout) == (
        (True, True, 0.0) if e.tricks else (False, False, 0.1))
    assert cfg.hybrid.scheme == e.scheme
    if e.one2many:
        assert cfg.hybrid.num_queries_one2many == e.one2many
    assert m.swin.drop_path_rate == (0.5 if e.backbone == "swin_large" and e.epochs == 36 else 0.2)


@pytest.mark.parametrize("entry,fixture", [
    ("r50_hybrid_branch_12ep", "r50_hybrid_headline"),
    ("r50_baseline_no_tricks_12ep", "r50_baseline_no_tricks"),  # derived: no query_embed without the tricks
    ("swin_t_hybrid_branch_36ep", "swin_tiny_hybrid"),
    ("swin_l_hybrid_branch_12ep", "swin_large_hybrid"),
])
def test_expected_keys_are_the_official_lists(entry, fixture):
    assert expected_keys(ZOO[entry]) == fixture_keys(fixture)


def test_expected_keys_follow_the_query_count():
    assert expected_keys(ZOO["swin_l_hybrid_branch_900q_36ep"])["query_embed.weight"] == (2400, 256)
    assert expected_keys(ZOO["r50_baseline_36ep"])["query_embed.weight"] == (300, 256)
    assert "query_embed.weight" not in expected_keys(ZOO["swin_l_baseline_no_tricks_36ep"])


def test_the_r50_baseline_key_list_maps_onto_its_config():
    from hdetr.models import build_model

    e = ZOO["r50_baseline_12ep"]
    cfg = load_config(e.preset, list(e.overrides) + ["model.pretrained_backbone=false"])  # no download
    ours = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    theirs = {official_key_to_hdetr(k): v for k, v in expected_keys(e).items() if official_key_to_hdetr(k)}
    assert theirs == ours


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UserError, match="did you mean r50_hybrid_branch_36ep"):
        get_entry("r50_hybrid_branch36ep")


def test_hdetr_models_lists_every_name_with_its_ap(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HDETR_HOME", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for e in ZOO.values():
        line = next(l for l in out.splitlines() if l.split()[:1] == [e.name])
        assert f"{e.ap:.1f}" in line
    assert str(tmp_path) in out
    assert main(["models", "--urls"]) == 0
    urls = capsys.readouterr().out.splitlines()
    assert len(urls) == 27 and all(l.split()[1].startswith("https://github.com/HDETR/") for l in urls)


def test_models_download_checks_every_name_first(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HDETR_HOME", str(tmp_path))
    assert main(["models", "--download", "r50_hybrid_branch_12ep", "r50_hybrid_brnch_36ep"]) == 2
    assert "'r50_hybrid_brnch_36ep' is not a model zoo name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing fetched


def test_version(capsys):
    import hdetr

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"hdetr {hdetr.__version__}"
