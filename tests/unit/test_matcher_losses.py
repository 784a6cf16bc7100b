from __future__ import annotations

import itertools

import pytest
import torch

from hdetr.losses import SetCriterion, repeat_targets
from hdetr.matcher import HungarianMatcher, MatchingError, match_cost
from hdetr.postprocess import postprocess


def random_case(seed, q, n, c=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, q, c, generator=g)
    boxes = torch.cat([torch.rand(1, q, 2, generator=g) * 0.6 + 0.2, torch.rand(1, q, 2, generator=g) * 0.3 + 0.05], -1)
    tgt = {"labels": torch.randint(0, c, (n,), generator=g),
           "boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], -1)}
    return {"pred_logits": logits, "pred_boxes": boxes}, [tgt]


@pytest.mark.parametrize("seed,q,n", [(0, 5, 3), (1, 6, 6), (2, 4, 4), (3, 7, 2)])
def test_matching_is_an_optimal_injection(seed, q, n):
    out, tgts = random_case(seed, q, n)
    matcher = HungarianMatcher()
    (rows, cols), = matcher(out, tgts)
    assert len(rows) == min(q, n) and len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert rows.tolist() == sorted(rows.tolist())
    cost = match_cost(out["pred_logits"][0], out["pred_boxes"][0], tgts[0]["labels"], tgts[0]["boxes"], 2, 5, 2)
    best = min(sum(cost[p[j], j] for j in range(n)) for p in itertools.permutations(range(q), n))
    assert float(cost[rows, cols].sum()) == pytest.approx(float(best), rel=1e-5)


def test_one_to_many_assigns_k_distinct_queries_per_ground_truth():
    out, tgts = random_case(4, 20, 3)
    (rows, cols), = HungarianMatcher()(out, repeat_targets(tgts, 4))
    assert len(rows) == 12 and len(set(rows.tolist())) == 12
    assert sorted((cols % 3).tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_image_without_boxes_matches_nothing_and_loss_is_finite():
    out, tgts = random_case(5, 6, 0)
    out["aux_outputs"] = []
    from hdetr.hybrid import MatchingPlan

    out.update(pred_logits_one2many=out["pred_logits"][:, :0], pred_boxes_one2many=out["pred_boxes"][:, :0], aux_outputs_one2many=[])
    losses = SetCriterion(4)(out, tgts, MatchingPlan((1,)))
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_bbox"]) == 0.0 and float(losses["loss_ce"]) > 0


def test_nan_predictions_give_a_clear_matching_error():
    out, tgts = random_case(6, 5, 2)
    out["pred_boxes"][0, 1] = float("nan")
    with pytest.raises(MatchingError, match="NaN"):
        HungarianMatcher()(out, tgts)


def test_postprocess_topk_over_queries_and_classes_in_pixels():
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 2, 1] = 3.0
    logits[0, 0, 0] = 1.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]]])
    (det,) = postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]), topk=2)
    assert det["labels"].tolist() == [1, 0] and det["query_index"].tolist() == [2, 0]
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([3.0, 1.0])))
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 50.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0]]))
