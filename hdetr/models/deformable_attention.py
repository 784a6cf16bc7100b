"""Multi-scale deformable attention (Deformable-DETR) in pure PyTorch.

``ms_deform_attn_reference`` is the readable reference: one ``grid_sample`` per feature level,
bilinear, zero padding, ``align_corners=False`` -- what the official CUDA kernel computes.
``ms_deform_attn_fast`` computes the same thing (see tests/test_fast_paths.py) as one weighted gather:
every sample becomes its 4 bilinear corners, all levels at once, and ``F.embedding_bag`` sums the
corner rows of the value table weighted by (bilinear weight x attention weight). Its backward is
hand-written: the value gradient is the transposed gather (sort the corner rows, then one more
``embedding_bag``), the location/attention gradients follow from the per-corner weight gradients.
``attention_impl`` ("fast" | "reference") picks the path; the reference stays for conformance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


ATTENTION_IMPLS = ("fast", "reference")


# Each level is stored with a border of zeros: 1 row/column before, 2 after. Samples are clamped to
# x in [-1, w] (y likewise), so all 4 corners always fall inside the padded level and a corner that
# is off the map reads a zero -- grid_sample's zero padding, with no validity masks.
_PAD_LO, _PAD_HI = 1, 2


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
    """Deformable sampling over a zero-padded value table (see ``_pad_levels``), all levels at once."""

    @staticmethod
    def forward(ctx, table, sampling_locations, attention_weights, spatial_shapes):
        n, s_pad, heads, head_dim = table.shape
        _, num_queries, _, levels, points, _ = sampling_locations.shape
        device, dtype = table.device, sampling_locations.dtype
        rows_total = n * s_pad * heads
        itype = torch.int32 if rows_total < 2**31 - 1 else torch.int64

        hw = torch.tensor(spatial_shapes, dtype=torch.int64, device=device)  # (L, 2) as (h, w)
        hp, wp = hw[:, 0] + _PAD_LO + _PAD_HI, hw[:, 1] + _PAD_LO + _PAD_HI
        starts = torch.cumsum(hp * wp, 0) - hp * wp
        hf = hw[:, 0].to(dtype).view(1, 1, 1, levels, 1)
        wf = hw[:, 1].to(dtype).view(1, 1, 1, levels, 1)
        # Pixel coordinates exactly as grid_sample computes them (align_corners=False).
        x = (((2 * sampling_locations[..., 0] - 1) + 1) * wf - 1) / 2
        y = (((2 * sampling_locations[..., 1] - 1) + 1) * hf - 1) / 2
        # Beyond [-1, w] every corner is off the map: the value and all gradients are 0 there.
        inside_x = (x >= -1) & (x <= wf)
        inside_y = (y >= -1) & (y <= hf)
        x = torch.minimum(x.clamp(min=-1.0), wf).nan_to_num(-1.0)
        y = torch.minimum(y.clamp(min=-1.0), hf).nan_to_num(-1.0)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        # Row of the top-left corner in the padded table: ((b * S' + start_l + yp * wp + xp) * heads + head).
        level_base = (starts + _PAD_LO * wp + _PAD_LO).view(1, 1, 1, levels, 1)
        batch = (torch.arange(n, device=device) * s_pad).view(n, 1, 1, 1, 1)
        head = torch.arange(heads, device=device).view(1, 1, heads, 1, 1)
        cell = y0.to(torch.int64) * wp.view(1, 1, 1, levels, 1) + x0.to(torch.int64)
        row00 = ((batch + level_base + cell) * heads + head).to(itype)
        # The 4 corners (x0y0, x1y0, x0y1, x1y1) are fixed row offsets from the top-left one.
        corner_offsets = (torch.stack((torch.zeros_like(wp), torch.ones_like(wp), wp, wp + 1), -1) * heads).to(itype)
        rows = row00[..., None] + corner_offsets.view(1, 1, 1, levels, 1, 4)

        ay = torch.stack((1 - fy, fy), -1) * attention_weights[..., None]  # (…, 2) y0, y1
        ax = torch.stack((1 - fx, fx), -1)
        weights = (ay[..., :, None] * ax[..., None, :]).flatten(-2)  # (…, 4) in corner order

        k = levels * points * 4
        out = F.embedding_bag(
            rows.view(-1, k), table.view(rows_total, head_dim), per_sample_weights=weights.view(-1, k), mode="sum"
        )
        ctx.save_for_backward(table, row00, corner_offsets, weights, attention_weights, fx, fy, inside_x, inside_y)
        ctx.spatial = (hp.tolist(), wp.tolist(), starts.tolist())
        return out.view(n, num_queries, heads * head_dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        table, row00, corner_offsets, weights, attn, fx, fy, inside_x, inside_y = ctx.saved_tensors
        n, s_pad, heads, head_dim = table.shape
        levels, points = row00.shape[-2:]
        rows_total = n * s_pad * heads
        itype = row00.dtype
        grad = grad_out.reshape(-1, head_dim).contiguous()  # one row per (batch, query, head) bag
        grad_table = grad_loc = grad_attn = None

        if ctx.needs_input_grad[0]:
            # Transposed gather. Group the samples by their top-left row (one sort over samples, not
            # corners); corner c of those samples reads the row ``corner_offsets[level, c]`` further on,
            # and within a padded level that shift never leaves the level.
            flat00 = row00.reshape(-1)
            sorted_rows, order = flat00.sort()
            counts = torch.bincount(sorted_rows, minlength=rows_total)
            offsets = (torch.cumsum(counts, 0) - counts).to(itype)
            bags = torch.div(order, levels * points, rounding_mode="floor").to(itype)
            w_sorted = weights.reshape(-1, 4)[order].t().contiguous()
            grad_table = F.embedding_bag(bags, grad, offsets, per_sample_weights=w_sorted[0], mode="sum")
            grad_table = grad_table.view(n, s_pad * heads, head_dim)
            hp, wp, starts = ctx.spatial
            for c in (1, 2, 3):
                shifted = F.embedding_bag(bags, grad, offsets, per_sample_weights=w_sorted[c], mode="sum")
                shifted = shifted.view(n, s_pad * heads, head_dim)
                for level in range(levels):
                    shift = int(corner_offsets[level, c])
                    lo, hi = starts[level] * heads, (starts[level] + hp[level] * wp[level]) * heads
                    grad_table[:, lo + shift : hi] += shifted[:, lo : hi - shift]
            grad_table = grad_table.view(n, s_pad, heads, head_dim)

        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            k = levels * points * 4
            bags_total = grad.shape[0]
            rows = (row00[..., None] + corner_offsets.view(1, 1, 1, levels, 1, 4)).reshape(-1)
            offsets = torch.arange(0, bags_total * k, k, device=grad.device, dtype=itype)
            offset2bag = torch.arange(bags_total, device=grad.device, dtype=itype).view(-1, 1).expand(-1, k).reshape(-1)
            # d(out)/d(corner weight) = <grad of its bag, value row of the corner>.
            g_w = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad, table.view(rows_total, head_dim), rows, offsets, offset2bag, 0, -1
            ).view(weights.shape)
            g_w = g_w.view(*weights.shape[:-1], 2, 2)  # (…, y corner, x corner)
            ax = torch.stack((1 - fx, fx), -1)
            if ctx.needs_input_grad[2]:
                ay = torch.stack((1 - fy, fy), -1)
                grad_attn = ((g_w * ax[..., None, :]).sum(-1) * ay).sum(-1)
            if ctx.needs_input_grad[1]:
                g_w = g_w * attn[..., None, None]
                dx = g_w[..., 1] - g_w[..., 0]  # (…, 2): d/dfx per y corner
                dy = g_w[..., 1, :] - g_w[..., 0, :]  # (…, 2): d/dfy per x corner
                g_fx = dx[..., 0] * (1 - fy) + dx[..., 1] * fy
                g_fy = dy[..., 0] * (1 - fx) + dy[..., 1] * fx
                hp, wp, _ = ctx.spatial
                w_l = torch.tensor(wp, dtype=fx.dtype, device=fx.device).view(1, 1, 1, levels, 1) - (_PAD_LO + _PAD_HI)
                h_l = torch.tensor(hp, dtype=fx.dtype, device=fx.device).view(1, 1, 1, levels, 1) - (_PAD_LO + _PAD_HI)
                # d(pixel x)/d(normalised x) = w (grid_sample's unnormalisation); 0 where clamped.
                grad_loc = torch.stack((g_fx * w_l * inside_x, g_fy * h_l * inside_y), -1)
        return grad_table, grad_loc, grad_attn, None


def ms_deform_attn_fast(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Same contract and result as ``ms_deform_attn_reference``, via one weighted gather over all levels."""
    spatial_shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    table = _pad_levels(value, spatial_shapes)
    return _MSDeformAttnFunction.apply(table, sampling_locations, attention_weights.contiguous(), spatial_shapes)


def ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights, impl: str = "fast") -> Tensor:
    if impl == "fast":
        return ms_deform_attn_fast(value, spatial_shapes, sampling_locations, attention_weights)
    if impl == "reference":
        return ms_deform_attn_reference(value, spatial_shapes, sampling_locations, attention_weights)
    raise ValueError(f"unknown attention_impl {impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")


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
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalise by (w, h).
            normalizer = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
            )
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # Offsets are relative to the reference box: half its size per unit, spread over points.
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape[-1]}")
        out = ms_deform_attn(value, spatial_shapes, locations, weights, self.impl)
        return self.output_proj(out)
