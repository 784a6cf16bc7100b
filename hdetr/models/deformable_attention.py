"""Multi-scale deformable attention (Deformable-DETR) in pure PyTorch.

``ms_deform_attn_reference`` is the readable reference: one ``grid_sample`` per feature level,
bilinear, zero padding, ``align_corners=False`` -- what the official CUDA kernel computes.
``ms_deform_attn_fast`` computes the same thing (see tests/unit/test_fast_paths.py) as one weighted gather:
every sample becomes its 4 bilinear corners, all levels at once, and ``F.embedding_bag`` sums the
corner rows of the value table weighted by (bilinear weight x attention weight). Its backward is
hand-written: the value gradient is the transposed gather (sort the corner rows, then one more
``embedding_bag``), the location/attention gradients follow from the per-corner weight gradients.
``attention_impl`` ("fast" | "reference") picks the path; the reference stays for conformance.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ATTENTION_IMPLS


def ms_deform_attn_reference(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Sample every level at the given locations and mix the samples with the attention weights.

    value: (N, S, heads, head_dim) with S = sum(h*w); sampling_locations: (N, Lq, heads, levels,
    points, 2) in [0, 1] (x, y); attention_weights: (N, Lq, heads, levels, points).
    Returns (N, Lq, heads * head_dim).
    """
    n, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_per_level[level].flatten(2).transpose(1, 2).reshape(n * heads, head_dim, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, num_queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, heads * head_dim, num_queries)
    return out.transpose(1, 2).contiguous()


def shape_normalizer(spatial_shapes, dtype, device) -> Tensor:
    """(levels, 2) tensor of (w, h) per level.

    Built with ``scalar_tensor`` rather than ``torch.tensor(list)`` so that sizes which are symbolic
    under ``torch.export`` stay symbolic (same values in eager mode).
    """
    return torch.stack(
        [torch.stack([torch.scalar_tensor(w, dtype=dtype, device=device),
                      torch.scalar_tensor(h, dtype=dtype, device=device)]) for h, w in spatial_shapes]
    )




# Each level is stored with a border of zeros: 1 row/column before, 2 after. Samples are clamped to
# x in [-1, w] (y likewise), so all 4 corners always fall inside the padded level and a corner that
# is off the map reads a zero -- grid_sample's zero padding, with no validity masks.
_PAD_LO, _PAD_HI = 1, 2
# Bags per block of the CPU inference path (8192 bags x 16 samples x 4 corners: 2 MB of rows and weights).
_INFERENCE_BLOCK_BAGS = 8192
# Below this many (sample, corner) pairs the value gradient is a direct index_add (no sort).
_SCATTER_MAX_CORNERS = 1 << 19


def eager_cpu(t: Tensor) -> bool:
    """Whether ``t`` is on the CPU and this is eager PyTorch, not a trace for export or compilation:
    the CPU inference blocks loop over a size, which a graph with dynamic sizes cannot hold."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()


def _pad_levels(value: Tensor, spatial_shapes) -> Tensor:
    """(N, S, heads, head_dim) -> (N, S', heads, head_dim) with every level zero-padded."""
    n, _, heads, head_dim = value.shape
    parts = value.split([h * w for h, w in spatial_shapes], dim=1)
    padded = [
        F.pad(part.reshape(n, h, w, heads * head_dim), (0, 0, _PAD_LO, _PAD_HI, _PAD_LO, _PAD_HI)).view(n, -1, heads, head_dim)
        for part, (h, w) in zip(parts, spatial_shapes)
    ]
    return torch.cat(padded, 1)


class _MSDeformAttnFunction(torch.autograd.Function):
    """Deformable sampling over a zero-padded value table (see ``_pad_levels``), all levels at once.

    Layouts (B = N * Lq * heads "bags", one per output row; K = levels * points samples per bag):
    locations (2, B, K) as (x, y); attention weights (B, K); corner weights and rows (B, 2, 2, K) as
    (y corner, x corner, sample) -- corners outermost so that no elementwise op has a tiny inner dim.
    """

    @staticmethod
    def forward(ctx, table, locations, attention_weights, spatial_shapes):
        n = table.shape[0]
        bags = attention_weights.shape[0]
        out, saved = _gather_samples(table, locations, attention_weights, spatial_shapes, bags // n, 0, True)
        row00, corner_offsets, fx, fy, inside_x, inside_y, wf, hf, spatial = saved
        ctx.save_for_backward(table, row00, corner_offsets, attention_weights, fx, fy, inside_x, inside_y, wf, hf)
        ctx.spatial = spatial
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        """The gradients of one forward, term by term in the forward's order. Kept whole: its intermediate
        tensors are shared by every term."""
        table, row00, corner_offsets, attn, fx, fy, inside_x, inside_y, wf, hf = ctx.saved_tensors
        n, s_pad, heads, head_dim = table.shape
        bags, k = row00.shape
        rows_total = n * s_pad * heads
        itype = row00.dtype
        grad = grad_out.contiguous()  # (B, head_dim)
        grad_table = grad_loc = grad_attn = None

        if ctx.needs_input_grad[0] and 4 * row00.numel() <= _SCATTER_MAX_CORNERS:
            # Few samples (e.g. a 300-query decoder) against a large table: scatter-add the corner
            # contributions directly instead of sorting and summing per table row.
            rows = (row00[:, None, None, :] + corner_offsets).reshape(-1).long()
            ay = torch.stack((1 - fy, fy), 1).mul_(attn[:, None])
            ax = torch.stack((1 - fx, fx), 1)
            weights = (ay[:, :, None] * ax[:, None]).reshape(bags, -1)  # (B, 4K)
            src = (weights[:, :, None] * grad[:, None, :]).reshape(-1, head_dim)
            grad_table = torch.zeros(rows_total, head_dim, dtype=grad.dtype, device=grad.device)
            grad_table.index_add_(0, rows, src)
            grad_table = grad_table.view(n, s_pad, heads, head_dim)
        elif ctx.needs_input_grad[0]:
            # Transposed gather. Group the samples by their top-left row (one sort over samples, not
            # corners); corner c of those samples reads the row ``corner_offsets[c]`` further on, and
            # within a padded level that shift never leaves the level.
            sorted_rows, order = row00.view(-1).sort()
            counts = torch.bincount(sorted_rows, minlength=rows_total)
            offsets = (torch.cumsum(counts, 0) - counts).to(itype)
            src_bag = torch.div(order, k, rounding_mode="floor").to(itype)
            a_s, fx_s, fy_s = attn.view(-1)[order], fx.view(-1)[order], fy.view(-1)[order]
            ay_s = (((1 - fy_s) * a_s), fy_s * a_s)
            ax_s = (1 - fx_s, fx_s)
            grad_table = torch.zeros(n, s_pad * heads, head_dim, dtype=grad.dtype, device=grad.device)
            hp, wp, starts = ctx.spatial
            points = k // len(hp)
            for cy in (0, 1):
                for cx in (0, 1):
                    part = F.embedding_bag(src_bag, grad, offsets, per_sample_weights=ay_s[cy] * ax_s[cx], mode="sum")
                    part = part.view(n, s_pad * heads, head_dim)
                    if cy == cx == 0:
                        grad_table += part
                        continue
                    for level in range(len(hp)):
                        shift = int(corner_offsets[cy, cx, level * points])
                        lo, hi = starts[level] * heads, (starts[level] + hp[level] * wp[level]) * heads
                        grad_table[:, lo + shift : hi] += part[:, lo : hi - shift]
            grad_table = grad_table.view(n, s_pad, heads, head_dim)

        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            rows = (row00[:, None, None, :] + corner_offsets).view(-1)
            # d(out)/d(corner weight) = <grad of its bag, value row of the corner>.
            g_w = _per_sample_weight_grad(grad, table.view(rows_total, head_dim), rows, 4 * k).view(bags, 2, 2, k)
            ax = torch.stack((1 - fx, fx), 1)
            if ctx.needs_input_grad[2]:
                ay = torch.stack((1 - fy, fy), 1)
                grad_attn = ((g_w * ax[:, None]).sum(2) * ay).sum(1)
            if ctx.needs_input_grad[1]:
                dx = g_w[:, :, 1] - g_w[:, :, 0]  # (B, 2 y corners, K): d/dfx
                dy = g_w[:, 1] - g_w[:, 0]  # (B, 2 x corners, K): d/dfy
                g_fx = (dx[:, 0] * (1 - fy)).add_(dx[:, 1] * fy).mul_(attn)
                g_fy = (dy[:, 0] * (1 - fx)).add_(dy[:, 1] * fx).mul_(attn)
                # d(pixel x)/d(normalised x) = w (grid_sample's unnormalisation); 0 where clamped.
                grad_loc = torch.stack((g_fx.mul_(wf).mul_(inside_x), g_fy.mul_(hf).mul_(inside_y)))
        return grad_table, grad_loc, grad_attn, None


def _gather_samples(table, locations, attention_weights, spatial_shapes, bags_per_image: int, first_bag: int,
                    for_backward: bool):
    """The forward of ``_MSDeformAttnFunction`` for bags ``first_bag ..`` (a block of all of them, in
    inference): (B, head_dim) and, ``for_backward``, what the backward needs."""
    n, s_pad, heads, head_dim = table.shape
    levels = len(spatial_shapes)
    bags, k = attention_weights.shape
    points = k // levels
    device, dtype = table.device, locations.dtype
    rows_total = n * s_pad * heads
    itype = torch.int32 if rows_total < 2**31 - 1 else torch.int64

    hw = torch.tensor(spatial_shapes, dtype=torch.int64, device=device)  # (L, 2) as (h, w)
    hp, wp = hw[:, 0] + _PAD_LO + _PAD_HI, hw[:, 1] + _PAD_LO + _PAD_HI
    starts = torch.cumsum(hp * wp, 0) - hp * wp

    def per_sample(t: Tensor) -> Tensor:  # (L,) -> (K,): one entry per (level, point)
        return t.repeat_interleave(points)

    hf, wf = per_sample(hw[:, 0]).to(dtype), per_sample(hw[:, 1]).to(dtype)
    # Pixel coordinates exactly as grid_sample computes them (align_corners=False).
    x = (((2 * locations[0] - 1) + 1) * wf - 1) / 2
    y = (((2 * locations[1] - 1) + 1) * hf - 1) / 2
    # Beyond [-1, w] every corner is off the map: the value and all gradients are 0 there.
    inside_x = (x >= -1) & (x <= wf) if for_backward else None
    inside_y = (y >= -1) & (y <= hf) if for_backward else None
    x = torch.minimum(x.clamp(min=-1.0), wf).nan_to_num_(-1.0)
    y = torch.minimum(y.clamp(min=-1.0), hf).nan_to_num_(-1.0)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x.sub_(x0), y.sub_(y0)
    # Row of the top-left corner in the padded table: (b * S' + start + (y0 + 1) * wp + x0 + 1) * heads + head.
    bag = torch.arange(first_bag, first_bag + bags, device=device)
    bag_base = ((bag // bags_per_image) * s_pad * heads + bag % heads).to(itype)
    level_base = per_sample((starts + _PAD_LO * wp + _PAD_LO) * heads).to(itype)
    wp_heads = per_sample(wp * heads).to(itype)
    row00 = y0.to(itype).mul_(wp_heads).add_(x0.to(itype).mul_(heads)).add_(level_base).add_(bag_base[:, None])
    # The 4 corners (x0y0, x1y0, x0y1, x1y1) are fixed row offsets from the top-left one.
    corner_offsets = torch.stack((torch.zeros_like(wp_heads), torch.full_like(wp_heads, heads), wp_heads,
                                  wp_heads + heads)).view(2, 2, k)
    rows = row00[:, None, None, :] + corner_offsets

    ay = torch.stack((1 - fy, fy), 1).mul_(attention_weights[:, None])  # (B, 2, K)
    ax = torch.stack((1 - fx, fx), 1)  # (B, 2, K)
    weights = ay[:, :, None] * ax[:, None]  # (B, 2, 2, K)

    out = F.embedding_bag(
        rows.view(bags, 4 * k), table.view(rows_total, head_dim), per_sample_weights=weights.view(bags, 4 * k),
        mode="sum",
    )
    if not for_backward:
        return out, None
    return out, (row00, corner_offsets, fx, fy, inside_x, inside_y, wf, hf, (hp.tolist(), wp.tolist(), starts.tolist()))


def _per_sample_weight_grad(grad: Tensor, table: Tensor, rows: Tensor, k: int) -> Tensor:
    """<grad[bag], table[row]> for every (bag, row) pair, bags of ``k`` consecutive rows.

    The ATen kernel (embedding_bag's per-sample-weight backward) runs on one thread; split the bags
    over ``torch.get_num_threads()`` Python threads (the kernel releases the GIL).
    """
    bags = grad.shape[0]
    workers = max(1, min(torch.get_num_threads(), bags // 4096))
    chunk = -(-bags // workers)

    def run(b0: int) -> Tensor:
        b1 = min(bags, b0 + chunk)
        nb = b1 - b0
        offsets = torch.arange(0, nb * k, k, device=grad.device, dtype=rows.dtype)
        offset2bag = torch.arange(nb, device=grad.device, dtype=rows.dtype).view(-1, 1).expand(nb, k).reshape(-1)
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            grad[b0:b1], table, rows[b0 * k : b1 * k], offsets, offset2bag, 0, -1
        )

    starts = list(range(0, bags, chunk))
    if len(starts) == 1:
        return run(0)
    return torch.cat(list(_worker_pool(len(starts)).map(run, starts)))


# One pool of worker threads for the process, kept between calls. Each worker limits its own OpenMP
# team to one thread: an ATen op in a fresh Python thread otherwise starts a team of
# torch.get_num_threads() OpenMP threads of its own, so that 2 workers ran 4 compute threads
# (plus the main team's spinning ones) on the cores meant for 2, and new threads (and teams) were
# created at every backward call. On a machine that other processes also load, that
# oversubscription is what multiplied the CPU time of a step.
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, size, pool)


def _worker_pool(size: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < size:  # forked children need their own
        _POOL = (os.getpid(), size, ThreadPoolExecutor(size, thread_name_prefix="hdetr-msda",
                                                       initializer=_single_threaded_openmp))
    return _POOL[2]


def _single_threaded_openmp() -> None:
    # omp_set_num_threads sets the calling thread's own count; torch.set_num_threads would also set
    # MKL's process-wide count (the main thread's matrix products).
    # ATen sets each thread's OpenMP count once, lazily, on its first parallel op (or
    # get_num_threads): let it do so first, then override it for this thread.
    torch.get_num_threads()
    lib = _openmp_library()
    if lib is not None:
        lib.omp_set_num_threads(1)


@functools.cache
def _openmp_library():
    """The OpenMP runtime torch is linked against (libgomp / libiomp5 / libomp), if found."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if line.rstrip().endswith(".so") or ".so." in line}
    except OSError:
        return None
    for path in sorted(paths):
        name = os.path.basename(path)
        if name.startswith(("libgomp", "libiomp5", "libomp")):
            try:
                return ctypes.CDLL(path)
            except OSError:
                return None
    return None


def _ms_deform_attn_xy(value: Tensor, spatial_shapes, locations_xy: Tensor, attention_weights: Tensor) -> Tensor:
    """``ms_deform_attn_fast`` with the locations given as (2, N, Lq, heads, levels, points)."""
    n, _, heads, head_dim = value.shape
    num_queries = attention_weights.shape[1]
    spatial_shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    table = _pad_levels(value, spatial_shapes)
    bags = n * num_queries * heads
    locations_xy, attention_weights = locations_xy.reshape(2, bags, -1), attention_weights.reshape(bags, -1)
    inference = not (torch.is_grad_enabled() and any(t.requires_grad for t in (table, locations_xy, attention_weights)))
    if inference and eager_cpu(table) and bags > _INFERENCE_BLOCK_BAGS:
        # A block of bags at a time: each bag's sum is computed exactly as in one call, but the corner
        # rows and weights of a block stay in cache instead of filling (and faulting in) fresh
        # 36 MB buffers per encoder layer.
        out = table.new_empty(bags, head_dim)
        for first in range(0, bags, _INFERENCE_BLOCK_BAGS):
            block = slice(first, first + _INFERENCE_BLOCK_BAGS)
            out[block] = _gather_samples(table, locations_xy[:, block], attention_weights[block], spatial_shapes,
                                         num_queries * heads, first, False)[0]
    else:
        out = _MSDeformAttnFunction.apply(table, locations_xy, attention_weights, spatial_shapes)
    return out.view(n, num_queries, heads * head_dim)


def ms_deform_attn_fast(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Same contract and result as ``ms_deform_attn_reference``, via one weighted gather over all levels."""
    return _ms_deform_attn_xy(value, spatial_shapes, sampling_locations.movedim(-1, 0), attention_weights)




class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``points`` sampled locations per head and level around its reference."""

    def __init__(self, d_model: int = 256, levels: int = 4, heads: int = 8, points: int = 4, impl: str = "fast"):
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention_impl {impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")
        self.impl = impl
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by the number of heads ({heads})")
        self.d_model, self.levels, self.heads, self.points = d_model, levels, heads, points
        self.sampling_offsets = nn.Linear(d_model, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d_model, heads * levels * points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start on a star of directions, one per head, growing with the point index.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """query (N, Lq, C); reference_points (N, Lq, levels, 2 or 4) normalised; value (N, S, C)."""
        n, num_queries, _ = query.shape
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, value.shape[1], self.heads, self.d_model // self.heads)
        offsets = self.sampling_offsets(query).view(n, num_queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(n, num_queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(n, num_queries, self.heads, self.levels, self.points)
        if reference_points.shape[-1] not in (2, 4):
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape[-1]}")
        if self.impl == "fast":
            # Same arithmetic, element by element, with (x, y) as the outermost dim: (2, N, Lq, heads, levels, points).
            offsets = offsets.movedim(-1, 0).contiguous()
            refs = reference_points.movedim(-1, 0)[:, :, :, None, :, None]
        else:
            refs = reference_points[:, :, None, :, None, :]
        xy = 0 if self.impl == "fast" else -1  # the coordinate dim
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalise by (w, h).
            normalizer = shape_normalizer(spatial_shapes, query.dtype, query.device)
            normalizer = normalizer.t()[:, None, None, None, :, None] if xy == 0 else normalizer[None, None, None, :, None, :]
            locations = refs + offsets / normalizer
        else:
            # Offsets are relative to the reference box: half its size per unit, spread over points.
            ref_xy, ref_wh = (refs[:2], refs[2:]) if xy == 0 else (refs[..., :2], refs[..., 2:])
            locations = ref_xy + offsets / self.points * ref_wh * 0.5
        # The sampling runs in fp32 even under autocast: bf16/fp16 locations lose sub-pixel precision
        # and grid_sample's half-precision backward accumulates badly (the official kernel is fp32 too).
        sample = _ms_deform_attn_xy if self.impl == "fast" else ms_deform_attn_reference
        dtype = torch.promote_types(value.dtype, torch.float32)  # half -> fp32; fp32/fp64 unchanged
        with torch.autocast(device_type=value.device.type, enabled=False):
            out = sample(value.to(dtype), spatial_shapes, locations.to(dtype), weights.to(dtype))
        return self.output_proj(out.to(query.dtype))
