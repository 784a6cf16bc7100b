"""What each hybrid scheme must do (the official code ships only the branch scheme)."""

from __future__ import annotations

import pytest
import torch

from hdetr.hybrid import QueryGroups, matching_plan, one2many_epoch_count, query_groups
from hdetr.losses import SetCriterion
from hdetr.models import build_model
from support.helpers import tiny_batch, tiny_config


@pytest.mark.parametrize("epochs,rho", [(12, 0.5), (12, 2 / 3), (5, 0.5), (10, 0.0), (10, 1.0), (7, 0.3)])
def test_epoch_scheme_switches_exactly_at_rho_T(epochs, rho):
    cfg = tiny_config("hybrid.scheme=epoch", f"hybrid.epoch_ratio={rho}", f"train.epochs={epochs}")
    kinds = [matching_plan(cfg, e).layer_repeats for e in range(epochs)]
    for e, repeats in enumerate(kinds):
        expected = 3 if e < rho * epochs else 1
        assert repeats == (expected,) * 3, f"epoch {e}"
    assert one2many_epoch_count(epochs, rho) == sum(1 for r in kinds if r[0] == 3)
    assert all(matching_plan(cfg, e).branch_repeats == 0 for e in range(epochs))


def test_layer_scheme_last_layers_see_unrepeated_targets():
    cfg = tiny_config("hybrid.scheme=layer", "hybrid.one2many_layers=2", "hybrid.k=3")
    plan = matching_plan(cfg, 0)
    assert plan.layer_repeats == (3, 3, 1)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    feats, mask, targets = tiny_batch(num_boxes=(3, 2))
    out = model(None, mask, features=feats)
    matches = {}
    SetCriterion(cfg.model.num_classes, cfg.loss)(out, targets, plan, matches=matches)
    for name in ("one2one.aux0", "one2one.aux1"):  # first L1 = 2 layers: one-to-many
        for (q, t), tgt in zip(matches[name], targets):
            n = len(tgt["labels"])
            assert len(q) == 3 * n and len(set(q.tolist())) == 3 * n
            assert sorted((t % n).tolist()) == sorted(list(range(n)) * 3)
    for (q, t), tgt in zip(matches["one2one.final"], targets):  # last L2 = 1 layer: one-to-one
        n = len(tgt["labels"])
        assert sorted(t.tolist()) == list(range(n))


def test_branch_scheme_one2many_queries_cannot_influence_one2one_outputs():
    cfg = tiny_config("hybrid.scheme=branch")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    feats, mask, _ = tiny_batch()
    with torch.no_grad():
        before = model(None, mask, features=feats)
        model.query_embedding.weight[cfg.model.num_queries:] += torch.randn_like(
            model.query_embedding.weight[cfg.model.num_queries:]
        )
        after = model(None, mask, features=feats)
    torch.testing.assert_close(after["pred_logits"], before["pred_logits"], rtol=0, atol=1e-6)
    torch.testing.assert_close(after["pred_boxes"], before["pred_boxes"], rtol=0, atol=1e-6)
    for a, b in zip(after["aux_outputs"], before["aux_outputs"]):
        torch.testing.assert_close(a["pred_logits"], b["pred_logits"], rtol=0, atol=1e-6)
    # ...while the one-to-many group itself did change: the perturbation was real.
    assert (after["pred_logits_one2many"] - before["pred_logits_one2many"]).abs().max() > 1e-3


def test_branch_scheme_eval_mode_never_builds_the_one2many_group():
    cfg = tiny_config("hybrid.scheme=branch")
    model = build_model(cfg).eval()
    seen = []
    layer = model.transformer.decoder_layers[0]
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    feats, mask, _ = tiny_batch()
    with torch.no_grad():
        out = model(None, mask, features=feats)
    assert seen == [cfg.model.num_queries]
    assert out["pred_logits"].shape[1] == cfg.model.num_queries
    assert out["pred_logits_one2many"].shape[1] == 0
    model.train()
    with torch.no_grad():
        model(None, mask, features=feats)
    handle.remove()
    assert seen[-1] == cfg.model.num_queries + cfg.hybrid.num_queries_one2many


def test_branch_loss_is_one2one_plus_lambda_times_one2many():
    torch.manual_seed(0)
    feats, mask, targets = tiny_batch()
    totals = {}
    for lam in (0.0, 1.0, 2.5):
        cfg = tiny_config("hybrid.scheme=branch", f"hybrid.lambda_one2many={lam}")
        torch.manual_seed(0)
        model = build_model(cfg).train()
        crit = SetCriterion(cfg.model.num_classes, cfg.loss)
        losses = crit(model(None, mask, features=feats), targets, matching_plan(cfg, 0))
        o2o = sum(v * crit.weight(k) for k, v in losses.items() if not k.endswith("_one2many"))
        o2m = sum(v * crit.weight(k) for k, v in losses.items() if k.endswith("_one2many"))
        totals[lam] = (float(o2o.detach()), float(o2m.detach()) if torch.is_tensor(o2m) else 0.0)
    base_o2o, unit_o2m = totals[1.0]
    assert totals[0.0][1] == 0.0
    assert totals[2.5][0] == pytest.approx(base_o2o, rel=1e-6)
    assert totals[2.5][1] == pytest.approx(2.5 * unit_o2m, rel=1e-5)
    assert unit_o2m > 0


def test_none_scheme_has_no_one2many_terms():
    cfg = tiny_config("hybrid.scheme=none")
    model = build_model(cfg).train()
    feats, mask, targets = tiny_batch()
    out = model(None, mask, features=feats)
    assert out["pred_logits_one2many"].shape[1] == 0
    losses = SetCriterion(cfg.model.num_classes, cfg.loss)(out, targets, matching_plan(cfg, 0))
    assert not any(k.endswith("_one2many") for k in losses)


def test_too_few_encoder_tokens_for_the_proposals_is_a_clear_error():
    cfg = tiny_config("hybrid.scheme=branch", "model.num_queries=50", "hybrid.num_queries_one2many=300")
    model = build_model(cfg).train()
    feats, mask, _ = tiny_batch(sizes=((32, 32),), num_boxes=(1,))
    with pytest.raises(ValueError, match="encoder tokens"):
        model(None, mask, features=feats)


@pytest.mark.parametrize("scheme,extra", [("branch", 24), ("none", 0), ("epoch", 0), ("layer", 0)])
def test_query_groups_decided_by_hybrid_and_used_by_the_model(scheme, extra):
    cfg = tiny_config(f"hybrid.scheme={scheme}", "hybrid.one2many_layers=2")
    assert query_groups(cfg) == QueryGroups(12, extra)
    model = build_model(cfg)
    assert model.query_groups == query_groups(cfg)
    feats, mask, _ = tiny_batch()
    for training, expected in ((True, 12 + extra), (False, 12)):
        out = model.train(training)(None, mask, features=feats)
        assert out["pred_logits"].shape[1] == 12
        assert out["pred_logits"].shape[1] + out["pred_logits_one2many"].shape[1] == expected
