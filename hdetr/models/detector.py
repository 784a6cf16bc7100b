"""H-Deformable-DETR: backbone -> input projections -> deformable transformer -> class/box heads.

Queries come in two groups: ``num_queries`` one-to-one queries (the only ones used at inference) and,
for the hybrid *branch* scheme, ``num_queries_one2many`` extra queries that exist only in training.
Both groups run in one decoder pass; a self-attention mask keeps them from seeing each other.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .backbone_weights import build_configured_backbone
from .deformable_attention import ATTENTION_IMPLS, MultiScaleDeformableAttention
from .position_encoding import SinePositionEncoding, downsample_mask
from .transformer import DeformableTransformer
from ..hybrid import QueryGroups, query_groups


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


class InputProjection(nn.Module):
    def __init__(self, in_channels: int, hidden_dim: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden_dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(32, hidden_dim)
        nn.init.xavier_uniform_(self.conv.weight, gain=1)
        nn.init.constant_(self.conv.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


def query_group_mask(num_one2one: int, num_total: int, device) -> Tensor:
    """Boolean self-attention mask (True = blocked) that isolates the two query groups."""
    mask = torch.zeros(num_total, num_total, dtype=torch.bool, device=device)
    mask[num_one2one:, :num_one2one] = True
    mask[:num_one2one, num_one2one:] = True
    return mask


class HDETR(nn.Module):
    def __init__(self, cfg: ModelConfig, num_queries_one2many: int = 0, backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.query_groups = QueryGroups(cfg.num_queries, num_queries_one2many)  # decided by hybrid.query_groups
        self.num_queries = cfg.num_queries
        self.num_queries_one2many = num_queries_one2many
        self.backbone = backbone if backbone is not None else build_configured_backbone(cfg)
        spec = self.backbone.spec
        d = cfg.hidden_dim
        self.position_encoding = SinePositionEncoding(d // 2)
        # The deepest maps feed the encoder, as in the official code: one level is the stride-32 map (C5),
        # three or more are all of them plus stride-2 convs. Every backbone stage then reaches the loss, which
        # DistributedDataParallel requires (an unused stage stops it at the second step).
        self.backbone_levels = min(cfg.num_feature_levels, len(spec.channels))
        projections = [InputProjection(c, d) for c in spec.channels[len(spec.channels) - self.backbone_levels:]]
        in_ch = spec.channels[-1]
        for _ in range(cfg.num_feature_levels - len(projections)):
            projections.append(InputProjection(in_ch, d, kernel_size=3, stride=2))
            in_ch = d
        self.input_projections = nn.ModuleList(projections)
        self._attention_impl = cfg.attention_impl  # the path in use; set_attention_impl switches it, cfg stays as loaded
        self.transformer = DeformableTransformer(
            d_model=d,
            heads=cfg.nheads,
            enc_layers=cfg.enc_layers,
            dec_layers=cfg.dec_layers,
            d_ffn=cfg.dim_feedforward,
            dropout=cfg.dropout,
            levels=cfg.num_feature_levels,
            enc_points=cfg.enc_n_points,
            dec_points=cfg.dec_n_points,
            two_stage=cfg.two_stage,
            mixed_selection=cfg.mixed_selection,
            look_forward_twice=cfg.look_forward_twice,
            with_box_refine=cfg.with_box_refine,
            attention_impl=cfg.attention_impl,
        )
        total = self.query_groups.total
        if not cfg.two_stage:
            self.query_embedding = nn.Embedding(total, 2 * d)  # positional half, then content half
        elif cfg.mixed_selection:
            self.query_embedding = nn.Embedding(total, d)  # content only; positions come from proposals
        else:
            self.query_embedding = None

        class_head = nn.Linear(d, cfg.num_classes)
        box_head = MLP(d, d, 4, 3)
        prior_prob = 0.01  # focal-loss prior: every class starts at probability 0.01
        nn.init.constant_(class_head.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(box_head.layers[-1].weight, 0)
        nn.init.constant_(box_head.layers[-1].bias, 0)
        num_heads = cfg.dec_layers + (1 if cfg.two_stage else 0)  # the extra pair scores encoder proposals
        if cfg.with_box_refine:
            self.class_heads = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_heads))
            self.box_heads = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_heads))
        else:
            self.class_heads = nn.ModuleList(class_head for _ in range(num_heads))
            self.box_heads = nn.ModuleList(box_head for _ in range(num_heads))
        if not cfg.two_stage:
            nn.init.constant_(self.box_heads[0].layers[-1].bias[2:], -2.0)

    @property
    def attention_impl(self) -> str:
        return self._attention_impl

    def set_attention_impl(self, impl: str) -> None:
        """The one way to switch the computation path: every fast path (deformable attention, grouped
        self-attention) on or off in place, the model and all its modules together. ``self.cfg`` keeps
        the value it was built with (configs are not changed after loading)."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention_impl {impl!r}; choose one of {', '.join(ATTENTION_IMPLS)}")
        self._attention_impl = impl
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.impl = impl

    def forward(self, images: Tensor | None, mask: Tensor, features: list[Tensor] | None = None) -> dict:
        """images (B, 3, H, W) padded batch; mask (B, H, W) True on padding.

        ``features`` replaces the backbone (its stride-8/16/32 maps for this batch). Returns the
        official output dict: ``pred_logits``/``pred_boxes`` (one2one, last layer), ``aux_outputs``,
        their ``*_one2many`` counterparts and, for two-stage models, ``enc_outputs``.
        """
        if features is None:
            features = self.backbone(images)
        srcs, masks, pos = [], [], []
        for level, feat in enumerate(features[len(features) - self.backbone_levels:]):
            m = downsample_mask(mask, feat.shape[-2:])
            srcs.append(self.input_projections[level](feat))
            masks.append(m)
            pos.append(self.position_encoding(m).to(feat.dtype))
        for level in range(len(srcs), len(self.input_projections)):
            # Extra coarser levels: stride-2 convs on the last backbone map, then on each other.
            src = self.input_projections[level](features[-1] if level == self.backbone_levels else srcs[-1])
            m = downsample_mask(mask, src.shape[-2:])
            srcs.append(src)
            masks.append(m)
            pos.append(self.position_encoding(m).to(src.dtype))

        groups = self.query_groups.active(self.training)
        n_o2o, n_o2m, total = groups.one2one, groups.one2many, groups.total
        query_embed = None if self.query_embedding is None else self.query_embedding.weight[:total]
        attn_mask = sizes = None
        if n_o2m and self.attention_impl == "fast":
            sizes = (n_o2o, n_o2m)  # two separate self-attentions instead of one masked one
        elif n_o2m:
            attn_mask = query_group_mask(n_o2o, total, mask.device)
        out = self.transformer(
            srcs, masks, pos, query_embed, total, self.class_heads, self.box_heads, attn_mask, query_groups=sizes
        )

        logits = torch.stack([self.class_heads[i](h) for i, h in enumerate(out.hidden_states)])
        return assemble_outputs(logits, out.boxes, n_o2o, out.enc_logits, out.enc_boxes)


def assemble_outputs(logits: Tensor, boxes: Tensor, n_o2o: int, enc_logits=None, enc_boxes=None) -> dict:
    """Per-layer stacked predictions -> the DETR output dict, split into the two query groups."""
    def layers(lg, bx):
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(lg[:-1], bx[:-1])]

    o2o_l, o2o_b = logits[:, :, :n_o2o], boxes[:, :, :n_o2o]
    o2m_l, o2m_b = logits[:, :, n_o2o:], boxes[:, :, n_o2o:]
    out = {
        "pred_logits": o2o_l[-1],
        "pred_boxes": o2o_b[-1],
        "aux_outputs": layers(o2o_l, o2o_b),
        "pred_logits_one2many": o2m_l[-1],
        "pred_boxes_one2many": o2m_b[-1],
        "aux_outputs_one2many": layers(o2m_l, o2m_b),
    }
    if enc_logits is not None:
        out["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes}
    return out


def build_model(cfg, backbone: nn.Module | None = None) -> HDETR:
    """The detector described by a full ``Config`` (the hybrid section decides the extra query group)."""
    return HDETR(cfg.model, num_queries_one2many=query_groups(cfg).one2many, backbone=backbone)


class WeightsMismatchError(ValueError):
    pass


def build_model_with_weights(cfg, state: dict, source) -> HDETR:
    """The model of ``cfg`` holding ``state``, which must fit it exactly. The backbone is never
    downloaded: its weights come from ``state``. Raises WeightsMismatchError naming ``source``."""
    # Damaged weights are refused, not run: NaN gives no detections, integer tensors truncated values.
    for key, t in state.items():
        if not torch.is_tensor(t):
            raise WeightsMismatchError(f"{source}: {key} is not a tensor ({type(t).__name__})")
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise WeightsMismatchError(f"{source}: {key} holds NaN or infinite values: the weights are damaged")
        elif not key.endswith("num_batches_tracked"):
            raise WeightsMismatchError(f"{source}: {key} has dtype {t.dtype}; model weights are floating point")
    # A derived config: the caller's stays as loaded.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained_backbone=False, backbone_weights=""))
    model = build_model(cfg)
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (the model wants {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise WeightsMismatchError(f"{source}: {len(wrong)} weight(s) of the wrong shape for the model its config "
                                   f"describes, e.g. {'; '.join(wrong[:2])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsMismatchError(
            f"{source}: weights do not fit the model its config describes: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    return model
