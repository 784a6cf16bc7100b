"""Deformable transformer: encoder, two-stage proposals and the refining decoder.

The detector (detector.py) owns the class and box heads and hands them to ``DeformableTransformer``:
the decoder needs the box heads for iterative refinement, the two-stage proposal step needs the
extra (last) pair of heads. Numerics follow the official H-Deformable-DETR code exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deformable_attention import MultiScaleDeformableAttention, eager_cpu


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


# Tokens per block of the CPU inference FFN: a 512 x 2048 hidden block is 4 MB.
FFN_ROW_BLOCK = 512


class _TrainingFfn(torch.autograd.Function):
    """``linear2(relu(linear1(x)))`` with its gradients, for training on the CPU without dropout.

    The same products as autograd's path, bitwise, with two fewer d_ffn-wide buffers per call (146 MB
    each for an encoder layer at 800x1066): the ReLU runs in place on linear1's output (autograd's
    ``F.relu`` allocates a new one) and its backward masks the incoming gradient in place (autograd
    allocates the masked copy). Fresh large buffers cost page faults on every layer; the full-size
    training step's time with it: docs/performance.md, "The training FFN as one autograd Function"."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        hidden = torch.addmm(b1, rows, w1.t()).relu_()
        out = torch.addmm(b2, hidden, w2.t())
        ctx.save_for_backward(rows, w1, w2, hidden)
        ctx.x_shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        rows, w1, w2, hidden = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        grad_out = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w2 = grad_out.t().mm(hidden) if need_w2 else None
        grad_b2 = grad_out.sum(0) if need_b2 else None
        grad_x = grad_w1 = grad_b1 = None
        if need_x or need_w1 or need_b1:
            grad_hidden = grad_out.mm(w2)
            # ReLU's backward, in place: zero where the output was zero (autograd's rule, bitwise).
            torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0, grad_input=grad_hidden)
            grad_w1 = grad_hidden.t().mm(rows) if need_w1 else None
            grad_b1 = grad_hidden.sum(0) if need_b1 else None
            grad_x = grad_hidden.mm(w1).view(ctx.x_shape) if need_x else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if eager_cpu(x) and not (self.training and self.dropout.p):
            if not torch.is_grad_enabled():
                return self._forward_rows(x)
            if not torch.is_autocast_enabled("cpu") and x.dtype == self.linear1.weight.dtype:
                return _TrainingFfn.apply(x, self.linear1.weight, self.linear1.bias, self.linear2.weight,
                                          self.linear2.bias)
        return self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))

    def _forward_rows(self, x: Tensor) -> Tensor:
        """Inference on the CPU, a block of tokens at a time: the same products row by row, but the
        d_ffn-wide hidden activations (150 MB per encoder layer at 800x1066) stay in cache, and the
        allocator reuses one small block instead of faulting in fresh pages for every layer."""
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] <= FFN_ROW_BLOCK:
            return self.linear2(F.relu_(self.linear1(x)))
        out = rows.new_empty(rows.shape[0], self.linear2.out_features)
        w2t = self.linear2.weight.t()
        for start in range(0, rows.shape[0], FFN_ROW_BLOCK):
            block = slice(start, start + FFN_ROW_BLOCK)
            hidden = F.relu_(self.linear1(rows[block]))
            torch.addmm(self.linear2.bias, hidden, w2t, out=out[block])
        return out.reshape(*x.shape[:-1], out.shape[-1])


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, dropout: float, levels: int, heads: int, points: int,
                 attention_impl: str = "fast"):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, levels, heads, points, attention_impl)
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ffn, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask):
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        src = self.self_attn_norm(src + self.dropout(attn))
        return self.ffn_norm(src + self.ffn(src))


class DecoderLayer(nn.Module):
    """Self-attention among queries (masked between query groups), then deformable cross-attention."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, levels: int, heads: int, points: int,
                 attention_impl: str = "fast"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn = MultiScaleDeformableAttention(d_model, levels, heads, points, attention_impl)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ffn, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, memory_padding_mask, self_attn_mask,
                query_groups=None):
        """``query_groups`` (sizes of consecutive query groups that never see each other) replaces a
        block-diagonal ``self_attn_mask``: one attention per group, no masked scores computed."""
        q = k = tgt + query_pos
        if query_groups is not None and len(query_groups) > 1:
            attn = torch.cat([
                self.self_attn(qg, qg, tg, need_weights=False)[0]
                for qg, tg in zip(q.split(list(query_groups), 1), tgt.split(list(query_groups), 1))
            ], 1)
        else:
            attn = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.self_attn_norm(tgt + self.dropout1(attn))
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, memory_padding_mask)
        tgt = self.cross_attn_norm(tgt + self.dropout2(attn))
        return self.ffn_norm(tgt + self.ffn(tgt))


def encoder_reference_points(spatial_shapes, valid_ratios: Tensor) -> Tensor:
    """Pixel centres of every level, normalised by each image's valid extent, replicated per level."""
    device = valid_ratios.device
    refs = []
    for level, (h, w) in enumerate(spatial_shapes):
        # arange + 0.5 equals the official linspace(0.5, h - 0.5, h) bit for bit, and keeps h symbolic
        # under torch.export (linspace would fix it to the export size).
        ref_y, ref_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device) + 0.5,
            torch.arange(w, dtype=torch.float32, device=device) + 0.5,
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]


def valid_ratio(mask: Tensor) -> Tensor:
    """Fraction of each padded map covered by the image, as (w, h)."""
    _, h, w = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def proposal_position_embedding(proposals: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of each of the 4 box coordinates (pre-sigmoid input): (N, L, 4 * num_pos_feats)."""
    scale = 2 * math.pi
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = proposals.sigmoid() * scale
    pos = pos[:, :, :, None] / dim_t
    return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)


@dataclass
class TransformerOutput:
    hidden_states: Tensor  # (layers, N, Q, C)
    boxes: Tensor  # (layers, N, Q, 4) normalised cxcywh, already refined and sigmoided
    enc_logits: Tensor | None  # (N, S, classes) two-stage proposals for every memory token
    enc_boxes: Tensor | None  # (N, S, 4)


class DeformableTransformer(nn.Module):
    def __init__(
        self,
        d_model: int = 256,
        heads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        levels: int = 4,
        enc_points: int = 4,
        dec_points: int = 4,
        two_stage: bool = False,
        mixed_selection: bool = False,
        look_forward_twice: bool = False,
        with_box_refine: bool = False,
        attention_impl: str = "fast",
    ):
        super().__init__()
        if two_stage and d_model % 4:
            # The proposal embedding has d_model / 2 sine features (pairs of sin, cos) per coordinate.
            raise ValueError(f"two_stage needs hidden_dim divisible by 4 (the proposal embedding is 2 x hidden_dim wide), got {d_model}")
        self.d_model = d_model
        self.two_stage = two_stage
        self.mixed_selection = mixed_selection
        self.look_forward_twice = look_forward_twice
        self.with_box_refine = with_box_refine
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(d_model, d_ffn, dropout, levels, heads, enc_points, attention_impl) for _ in range(enc_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(d_model, d_ffn, dropout, levels, heads, dec_points, attention_impl) for _ in range(dec_layers)
        )
        self.level_embed = nn.Parameter(torch.empty(levels, d_model))
        if two_stage:
            self.enc_output_proj = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.query_pos_proj = nn.Linear(d_model * 2, d_model * 2)
            self.query_pos_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points_proj = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points_proj.weight, gain=1.0)
            nn.init.constant_(self.reference_points_proj.bias, 0.0)
        nn.init.normal_(self.level_embed)

    @property
    def num_decoder_layers(self) -> int:
        return len(self.decoder_layers)

    def encoder_proposals(self, memory: Tensor, padding_mask: Tensor, spatial_shapes):
        """One anchor box per memory token (centre of the cell, size 0.05 * 2^level), in logit space.

        Tokens on padding or too close to the border get +inf coordinates and a zeroed memory row,
        so they are never preferred and their boxes come out as exactly 1.0.
        """
        n = memory.shape[0]
        proposals, start = [], 0
        for level, (h, w) in enumerate(spatial_shapes):
            mask_l = padding_mask[:, start : start + h * w].view(n, h, w)
            valid_h = torch.sum(~mask_l[:, :, 0], 1)
            valid_w = torch.sum(~mask_l[:, 0, :], 1)
            grid_y, grid_x = torch.meshgrid(  # = linspace(0, h - 1, h) exactly; export-friendly
                torch.arange(h, dtype=torch.float32, device=memory.device),
                torch.arange(w, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
            scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(n, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0**level)
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
            start += h * w
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        invalid = padding_mask.unsqueeze(-1) | ~valid
        proposals = proposals.masked_fill(invalid, float("inf"))
        output_memory = memory.masked_fill(invalid, 0.0)
        output_memory = self.enc_output_norm(self.enc_output_proj(output_memory))
        return output_memory, proposals

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        query_embed: Tensor | None,
        num_queries: int,
        class_heads: nn.ModuleList,
        box_heads: nn.ModuleList,
        self_attn_mask: Tensor | None = None,
        query_groups: tuple[int, ...] | None = None,
    ) -> TransformerOutput:
        # Sizes stay as given by .shape (plain ints in eager mode, symbolic under torch.export).
        spatial_shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1) for i, p in enumerate(pos_embeds)], 1
        )
        valid_ratios = torch.stack([valid_ratio(m) for m in masks], 1)

        memory = src_flat
        enc_refs = encoder_reference_points(spatial_shapes, valid_ratios)
        for layer in self.encoder_layers:
            memory = layer(memory, pos_flat, enc_refs, spatial_shapes, mask_flat)

        n, _, c = memory.shape
        enc_logits = enc_boxes = None
        if self.two_stage:
            output_memory, proposals = self.encoder_proposals(memory, mask_flat, spatial_shapes)
            last = self.num_decoder_layers
            enc_logits = class_heads[last](output_memory)
            enc_coords = box_heads[last](output_memory) + proposals
            enc_boxes = enc_coords.sigmoid()
            if num_queries > enc_logits.shape[1]:
                raise ValueError(
                    f"two-stage query selection needs at least {num_queries} encoder tokens (the queries of "
                    f"both groups), but these images give {enc_logits.shape[1]} at shapes {spatial_shapes}: "
                    f"use larger images (data.train_scales / data.val_scale) or fewer queries"
                )
            topk = torch.topk(enc_logits[..., 0], num_queries, dim=1)[1]
            topk_coords = torch.gather(enc_coords, 1, topk.unsqueeze(-1).expand(-1, -1, 4)).detach()
            reference_points = topk_coords.sigmoid()
            pos_trans = self.query_pos_norm(self.query_pos_proj(proposal_position_embedding(topk_coords, self.d_model // 2)))
            query_pos, tgt = torch.split(pos_trans, c, dim=2)
            if self.mixed_selection:
                # Positions from the proposals, content from learned embeddings.
                tgt = query_embed.unsqueeze(0).expand(n, -1, -1)
        else:
            query_pos, tgt = torch.split(query_embed, c, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(n, -1, -1)
            tgt = tgt.unsqueeze(0).expand(n, -1, -1)
            reference_points = self.reference_points_proj(query_pos).sigmoid()

        hidden, boxes = self._decode(
            tgt, query_pos, reference_points, memory, spatial_shapes, mask_flat, valid_ratios, box_heads, self_attn_mask,
            query_groups,
        )
        return TransformerOutput(hidden, boxes, enc_logits, enc_boxes)

    def _decode(self, tgt, query_pos, reference, memory, spatial_shapes, memory_mask, valid_ratios, box_heads, attn_mask,
                query_groups=None):
        """Run the decoder; each layer predicts a box relative to a reference box.

        Layer l refines its sampling reference r_l into n_l = sigmoid(head_l(h_l) + logit(r_l)), and
        r_{l+1} = detach(n_l) (box refinement). The *prediction* of layer l is
        sigmoid(head_l(h_l) + logit(p_l)) with p_l = r_l, or with look-forward-twice p_l = n_{l-1}
        (same value, but its gradient reaches layer l-1 -- and only layer l-1).
        """
        output = tgt
        hidden, boxes = [], []
        pred_ref = reference  # the reference whose gradient reaches this layer's prediction

        def apply(delta: Tensor, ref: Tensor) -> Tensor:
            if ref.shape[-1] == 4:
                return (delta + inverse_sigmoid(ref)).sigmoid()
            return torch.cat([delta[..., :2] + inverse_sigmoid(ref), delta[..., 2:]], -1).sigmoid()

        for lid, layer in enumerate(self.decoder_layers):
            if reference.shape[-1] == 4:
                ref_input = reference[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_input = reference[:, :, None] * valid_ratios[:, None]
            output = layer(output, query_pos, ref_input, memory, spatial_shapes, memory_mask, attn_mask, query_groups)
            delta = box_heads[lid](output)
            refined = apply(delta, reference)
            hidden.append(output)
            boxes.append(refined if pred_ref is reference else apply(delta, pred_ref))
            if self.with_box_refine:
                reference = refined.detach()
                pred_ref = refined if self.look_forward_twice else reference
        return torch.stack(hidden), torch.stack(boxes)
