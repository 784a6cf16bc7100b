"""Every fast computation path against the plain reference it replaces (values and gradients).

- ``ms_deform_attn_fast`` vs ``ms_deform_attn_reference`` (grid_sample: bilinear, zero padding,
  align_corners=False), random shapes, samples on and off the map, exact pixel centres and borders;
- ``MultiScaleDeformableAttention`` with ``impl='fast'`` vs ``'reference'`` (2- and 4-coordinate
  references, padding masks);
- the decoder's per-group self-attention vs the block-masked one;
- whole models (hybrid branch and one-to-one, two-stage and plain) built with
  ``model.attention_impl=fast`` vs ``reference``: outputs, losses and every parameter gradient.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hdetr.config import build_config
from hdetr.hybrid import matching_plan
from hdetr.losses import SetCriterion
from hdetr.models import build_model
from hdetr.models.deformable_attention import (
    MultiScaleDeformableAttention,
    _MSDeformAttnFunction,
    _pad_levels,
    ms_deform_attn_fast,
    ms_deform_attn_reference,
)
from hdetr.models.detector import query_group_mask
from hdetr.models.transformer import DecoderLayer

F64 = {"rtol": 1e-10, "atol": 1e-11}


@pytest.fixture(params=["sorted", "scatter"])
def value_grad_path(request, monkeypatch):
    """The value gradient has two implementations, picked by problem size; run both."""
    import hdetr.models.deformable_attention as da

    monkeypatch.setattr(da, "_SCATTER_MAX_CORNERS", 0 if request.param == "sorted" else 1 << 40)
    return request.param
F32 = {"rtol": 1e-5, "atol": 2e-5}


def _inputs(seed, n, shapes, heads, head_dim, queries, points, dtype, spread=1.6):
    g = torch.Generator().manual_seed(seed)
    levels, tokens = len(shapes), sum(h * w for h, w in shapes)
    value = torch.randn(n, tokens, heads, head_dim, generator=g, dtype=dtype)
    # Locations in [-0.3, 1.3]: many samples partly or wholly off the map.
    loc = torch.rand(n, queries, heads, levels, points, 2, generator=g, dtype=dtype) * spread - (spread - 1) / 2
    attn = torch.rand(n, queries, heads, levels, points, generator=g, dtype=dtype)
    return value, loc, attn


def _compare(value, shapes, loc, attn, tol, seed=0):
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    ref_leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn_fast(leaves[0], shapes, leaves[1], leaves[2])
    ref = ms_deform_attn_reference(ref_leaves[0], shapes, ref_leaves[1], ref_leaves[2])
    torch.testing.assert_close(out, ref, **tol)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(ref, ref_leaves, grad)
    for name, a, b in zip(("value", "locations", "attention_weights"), got, want):
        # Float32: the absolute tolerance scales with the tensor (location gradients are O(map size)).
        t = dict(tol, atol=tol["atol"] * max(1.0, float(b.abs().max())))
        torch.testing.assert_close(a, b, **t, msg=lambda m: f"grad of {name}: {m}")


SHAPE_CASES = [
    # n, spatial shapes, heads, head_dim, queries, points
    (1, [(6, 7)], 1, 4, 5, 1),
    (2, [(6, 7), (3, 4), (2, 2), (1, 1)], 3, 5, 9, 2),
    (1, [(1, 1), (1, 3), (4, 1)], 2, 8, 11, 4),
    (3, [(9, 5), (5, 3)], 4, 2, 7, 3),
    (1, [(13, 17), (7, 9), (4, 5), (2, 3)], 8, 32, 40, 4),
]


@pytest.mark.parametrize("case", range(len(SHAPE_CASES)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deform_attn_random_shapes(case, dtype, value_grad_path):
    n, shapes, heads, head_dim, queries, points = SHAPE_CASES[case]
    value, loc, attn = _inputs(case, n, shapes, heads, head_dim, queries, points, dtype)
    _compare(value, shapes, loc, attn, F64 if dtype == torch.float64 else F32, seed=case)


def test_deform_attn_far_outside_and_borders(value_grad_path):
    """Samples far off the map, exactly on borders, pixel centres and integer pixel positions."""
    shapes = [(4, 5), (2, 3)]
    n, heads, head_dim, points = 1, 2, 3, 2
    value, _, _ = _inputs(0, n, shapes, heads, head_dim, 1, points, torch.float64)
    special = torch.tensor([-5.0, -1.0, -0.25, -0.1, 0.0, 0.05, 0.1, 0.5, 0.7, 0.9, 1.0, 1.1, 1.25, 3.0, 40.0],
                           dtype=torch.float64)
    # Exact pixel centres ((i + 0.5) / w) and corners (i / w) of the first level, plus the values above.
    coords = torch.cat([special, (torch.arange(6, dtype=torch.float64) + 0.5) / 5, torch.arange(6, dtype=torch.float64) / 5])
    xs, ys = torch.meshgrid(coords, coords[torch.randperm(len(coords), generator=torch.Generator().manual_seed(1))],
                            indexing="ij")
    q = xs.numel()
    loc = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    loc = loc.view(1, q, 1, 1, 1, 2).expand(n, q, heads, len(shapes), points, 2).contiguous()
    attn = torch.rand(n, q, heads, len(shapes), points, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _compare(value, shapes, loc, attn, F64)


def test_deform_attn_gradcheck(value_grad_path):
    shapes = [(3, 4), (2, 2)]
    value, loc, attn = _inputs(3, 2, shapes, 2, 3, 4, 2, torch.float64)
    # Keep samples away from integer pixel positions, where bilinear sampling has a kink.
    fn = lambda v, l, a: ms_deform_attn_fast(v, shapes, l, a)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (value.requires_grad_(), loc.requires_grad_(), attn.requires_grad_()))


def test_deform_attn_threaded_weight_grad(value_grad_path):
    """Enough bags that the per-sample-weight gradient is split over threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        shapes = [(20, 30), (10, 15)]
        value, loc, attn = _inputs(4, 2, shapes, 8, 4, 600, 2, torch.float64)  # 2 * 600 * 8 = 9600 bags
        _compare(value, shapes, loc, attn, F64)
    finally:
        torch.set_num_threads(threads)


def test_deform_attn_partial_grads():
    """Only some inputs need gradients (e.g. frozen value)."""
    shapes = [(5, 6), (3, 3)]
    value, loc, attn = _inputs(5, 1, shapes, 2, 4, 6, 2, torch.float64)
    loc.requires_grad_()
    out = ms_deform_attn_fast(value, shapes, loc, attn)
    ref_loc = loc.detach().clone().requires_grad_()
    ref = ms_deform_attn_reference(value, shapes, ref_loc, attn)
    torch.testing.assert_close(out, ref, **F64)
    (g,) = torch.autograd.grad(out.sum(), loc)
    (h,) = torch.autograd.grad(ref.sum(), ref_loc)
    torch.testing.assert_close(g, h, **F64)


def test_pad_levels_zero_border():
    shapes = [(2, 3), (1, 2)]
    value = torch.arange(8 * 2 * 1, dtype=torch.float32).view(1, 8, 2, 1) + 1
    table = _pad_levels(value, shapes)
    assert table.shape == (1, (2 + 3) * (3 + 3) + (1 + 3) * (2 + 3), 2, 1)
    assert table.abs().sum() == value.abs().sum()
    assert _MSDeformAttnFunction is not None


@pytest.mark.parametrize("ref_dims", [2, 4])
@pytest.mark.parametrize("with_mask", [False, True])
def test_module_fast_vs_reference(ref_dims, with_mask):
    torch.manual_seed(0)
    shapes = [(8, 10), (4, 5), (2, 3), (1, 2)]
    d, heads, levels, points, n, queries = 32, 4, 4, 3, 2, 13
    fast = MultiScaleDeformableAttention(d, levels, heads, points, impl="fast").double()
    with torch.no_grad():  # non-trivial offsets and attention logits
        fast.sampling_offsets.weight.normal_(0, 0.3)
        fast.attention_weights.weight.normal_(0, 0.3)
    ref = copy.deepcopy(fast)
    ref.impl = "reference"
    tokens = sum(h * w for h, w in shapes)
    g = torch.Generator().manual_seed(1)
    query = torch.randn(n, queries, d, generator=g, dtype=torch.float64)
    value = torch.randn(n, tokens, d, generator=g, dtype=torch.float64)
    refs = torch.rand(n, queries, levels, ref_dims, generator=g, dtype=torch.float64)
    if ref_dims == 4:
        refs[..., 2:] = refs[..., 2:] * 0.5
    mask = None
    if with_mask:
        mask = torch.zeros(n, tokens, dtype=torch.bool)
        mask[1, ::3] = True
    outs, grads = [], []
    for module in (fast, ref):
        inputs = [t.clone().requires_grad_() for t in (query, value, refs)]
        out = module(inputs[0], inputs[2], inputs[1], shapes, mask)
        out.backward(torch.ones_like(out))
        outs.append(out)
        grads.append([t.grad for t in inputs] + [p.grad for p in module.parameters()])
    torch.testing.assert_close(outs[0], outs[1], **F64)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **F64)


def test_grouped_self_attention_matches_masked():
    torch.manual_seed(0)
    shapes = [(6, 7), (3, 4)]
    layer = DecoderLayer(32, 64, 0.0, 2, 4, 2, attention_impl="fast").double()
    n, groups = 2, (5, 12)
    q = sum(groups)
    g = torch.Generator().manual_seed(3)
    tgt = torch.randn(n, q, 32, generator=g, dtype=torch.float64)
    pos = torch.randn(n, q, 32, generator=g, dtype=torch.float64)
    refs = torch.rand(n, q, 2, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25
    memory = torch.randn(n, sum(h * w for h, w in shapes), 32, generator=g, dtype=torch.float64)
    mask = torch.zeros(n, memory.shape[1], dtype=torch.bool)
    results = []
    for kwargs in ({"self_attn_mask": None, "query_groups": groups},
                   {"self_attn_mask": query_group_mask(groups[0], q, tgt.device), "query_groups": None}):
        layer.zero_grad()
        t = tgt.clone().requires_grad_()
        out = layer(t, pos, refs, memory, shapes, mask, **kwargs)
        out.backward(torch.ones_like(out))
        results.append((out, t.grad, [p.grad.clone() for p in layer.parameters()]))
    (a, ga, pa), (b, gb, pb) = results
    torch.testing.assert_close(a, b, **F64)
    torch.testing.assert_close(ga, gb, **F64)
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, **F64)


def _tiny_config(scheme: str, two_stage: bool, impl: str):
    model = {
        "backbone": "precomputed", "backbone_channels": [16, 32, 64], "hidden_dim": 256, "nheads": 4,
        "enc_layers": 2, "dec_layers": 2, "dim_feedforward": 64, "num_queries": 6, "num_classes": 7, "topk": 5,
        "two_stage": two_stage, "mixed_selection": two_stage, "with_box_refine": True,
        "look_forward_twice": True, "attention_impl": impl,
    }
    hybrid = {"scheme": scheme, "num_queries_one2many": 10, "k": 2}
    return build_config({"model": model, "hybrid": hybrid})


@pytest.mark.parametrize("scheme,two_stage", [("branch", True), ("none", True), ("branch", False)])
def test_model_fast_vs_reference(scheme, two_stage):
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, c, h, w, generator=g) for c, h, w in ((16, 12, 15), (32, 6, 8), (64, 3, 4))]
    mask = torch.zeros(2, 96, 120, dtype=torch.bool)
    mask[1, 70:, :] = True
    mask[1, :, 100:] = True
    targets = [
        {"labels": torch.tensor([1, 3, 5]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1], [0.7, 0.2, 0.3, 0.2]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.3]])},
    ]
    runs = []
    for impl in ("fast", "reference"):
        cfg = _tiny_config(scheme, two_stage, impl)
        torch.manual_seed(0)
        model = build_model(cfg).double().train()
        # The initial offsets put encoder samples exactly on integer pixel positions, where bilinear
        # sampling has a kink and the gradient is one-sided; which side a float64 implementation
        # lands on is a rounding accident (grid_sample and the official CUDA kernel differ there
        # too). Move the samples off the kinks, identically for both paths.
        g_off = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, MultiScaleDeformableAttention):
                    m.sampling_offsets.bias.add_(torch.rand(m.sampling_offsets.bias.shape, generator=g_off,
                                                            dtype=torch.float64) * 0.2 - 0.1)
        crit = SetCriterion(cfg.model.num_classes, cfg.loss)
        out = model(None, mask, features=[f.double() for f in feats])
        losses = crit(out, targets, matching_plan(cfg, 0))
        crit.total(losses).backward()
        model.eval()
        with torch.no_grad():
            ev = model(None, mask, features=[f.double() for f in feats])
        runs.append((out, losses, {k: p.grad for k, p in model.named_parameters() if p.grad is not None}, ev))
    (out_f, loss_f, grad_f, ev_f), (out_r, loss_r, grad_r, ev_r) = runs
    for key in ("pred_logits", "pred_boxes", "pred_logits_one2many", "pred_boxes_one2many"):
        torch.testing.assert_close(out_f[key], out_r[key], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ev_f["pred_logits"], ev_r["pred_logits"], rtol=1e-9, atol=1e-10)
    assert loss_f.keys() == loss_r.keys()
    for key in loss_f:
        torch.testing.assert_close(loss_f[key], loss_r[key], rtol=1e-9, atol=1e-10, msg=lambda m: f"{key}: {m}")
    assert grad_f.keys() == grad_r.keys()
    for key in grad_f:
        torch.testing.assert_close(grad_f[key], grad_r[key], rtol=1e-7, atol=1e-9, msg=lambda m: f"{key}: {m}")


def test_set_attention_impl_switches_every_module():
    cfg = _tiny_config("branch", True, "reference")
    model = build_model(cfg)
    model.set_attention_impl("fast")
    assert model.attention_impl == "fast"
    assert all(m.impl == "fast" for m in model.modules() if isinstance(m, MultiScaleDeformableAttention))
    with pytest.raises(ValueError):
        model.set_attention_impl("cuda")
    assert model.cfg.attention_impl == "reference" and cfg.model.attention_impl == "reference"  # configs stay as loaded


def test_config_rejects_unknown_impl():
    from hdetr.config import ConfigError

    with pytest.raises(ConfigError, match="attention_impl"):
        build_config({"model": {"attention_impl": "triton"}})


def test_blocked_inference_gather_is_the_one_call_gather_bitwise(monkeypatch):
    # Inference on the CPU samples a block of bags at a time; every bag's sum must be the same bits
    # as in one call (2 images, so the blocks cross the image boundary; samples on and off the map).
    import hdetr.models.deformable_attention as da

    g = torch.Generator().manual_seed(3)
    shapes = [(9, 11), (5, 6), (3, 3)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 4, 8, generator=g)
    locations = torch.rand(2, 37, 4, 3, 2, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(2, 37, 4, 3, 2, generator=g).softmax(-1)
    with torch.no_grad():
        whole = ms_deform_attn_fast(value, shapes, locations, weights)
        monkeypatch.setattr(da, "_INFERENCE_BLOCK_BAGS", 25)  # 296 bags: 12 blocks, the last one partial
        blocked = ms_deform_attn_fast(value, shapes, locations, weights)
    assert torch.equal(blocked, whole)
    assert torch.allclose(blocked, ms_deform_attn_reference(value, shapes, locations, weights), atol=1e-5)
    # With gradients the autograd Function runs (in one call), and the result is the same.
    with_grad = ms_deform_attn_fast(value.requires_grad_(True), shapes, locations, weights)
    assert with_grad.grad_fn is not None and torch.equal(with_grad.detach(), whole)


def test_blocked_inference_ffn_matches_the_plain_ffn(monkeypatch):
    import hdetr.models.transformer as tr

    torch.manual_seed(0)
    ffn = tr.FeedForward(16, 64, 0.0).eval()
    x = torch.randn(2, 45, 16)
    plain = ffn.linear2(torch.relu(ffn.linear1(x))).detach()
    monkeypatch.setattr(tr, "FFN_ROW_BLOCK", 8)  # 90 rows: 12 blocks, the last one partial
    with torch.no_grad():
        blocked = ffn(x)
    assert blocked.shape == plain.shape
    # The same products row by row; a matrix-multiply kernel may round a block like a whole, or not.
    torch.testing.assert_close(blocked, plain, rtol=1e-6, atol=1e-6)
    # Training (gradients) keeps the plain path.
    y = ffn(x.requires_grad_(True))
    assert y.grad_fn is not None


@pytest.mark.parametrize("frozen", [(), ("linear1.weight", "linear1.bias"), ("linear2.weight",)])
def test_training_ffn_gradients_are_autograds(frozen):
    """The CPU training FFN (in-place ReLU and ReLU backward) gives autograd's output and gradients,
    also with some weights frozen (their gradients skipped) and for a non-contiguous upstream gradient."""
    import hdetr.models.transformer as tr

    torch.manual_seed(0)
    ffn = tr.FeedForward(16, 64, 0.0).train()
    for name, p in ffn.named_parameters():
        p.requires_grad_(name not in frozen)
    x = torch.randn(3, 45, 16, requires_grad=True)
    grad = torch.randn(16, 45, 3).permute(2, 1, 0)  # non-contiguous

    def plain(inp):
        return ffn.linear2(torch.relu(ffn.linear1(inp)))

    results = []
    for fn in (plain, ffn):
        x.grad = None
        ffn.zero_grad(set_to_none=True)
        y = fn(x)
        y.backward(grad)
        results.append((y.detach(), x.grad, {n: p.grad for n, p in ffn.named_parameters()}))
    (y0, gx0, gp0), (y1, gx1, gp1) = results
    assert type(y.grad_fn).__name__ == "_TrainingFfnBackward"  # the fused path ran
    assert torch.equal(y0, y1)
    torch.testing.assert_close(gx1, gx0, rtol=1e-6, atol=1e-6)
    for name in gp0:
        if name in frozen:
            assert gp0[name] is None and gp1[name] is None
        else:
            torch.testing.assert_close(gp1[name], gp0[name], rtol=1e-6, atol=1e-6)


def test_training_ffn_keeps_autograds_path_with_dropout_or_autocast():
    import hdetr.models.transformer as tr

    x = torch.randn(2, 5, 16, requires_grad=True)
    assert type(tr.FeedForward(16, 64, 0.1).train()(x).grad_fn).__name__ != "_TrainingFfnBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tr.FeedForward(16, 64, 0.0).train()(x)
    assert type(y.grad_fn).__name__ != "_TrainingFfnBackward" and y.dtype == torch.bfloat16
