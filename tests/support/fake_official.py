"""A minimal stand-in for a checkout of the official H-Deformable-DETR repository, written to a folder.

Same layout, entry points and calling conventions as the parts ``benchmarks.official`` uses (main.py's
get_args_parser, engine.py's train_hybrid, models.deformable_detr.build, the ops package with a
compiled-op import and a pure-PyTorch function, util.misc, the R50 config scripts), with a toy model,
so that the side-by-side harness is tested without the real checkout.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.official import CONFIGS

FILES = {
    "main.py": '''
import argparse
import numpy as np
import datasets  # the repository's own package: the harness must not import it
from engine import train_hybrid


def get_args_parser():
    parser = argparse.ArgumentParser("fake", add_help=False)
    parser.add_argument("--output_dir", default="")
    parser.add_argument("--with_box_refine", action="store_true")
    parser.add_argument("--two_stage", action="store_true")
    parser.add_argument("--mixed_selection", action="store_true")
    parser.add_argument("--look_forward_twice", action="store_true")
    parser.add_argument("--dim_feedforward", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr_drop", type=int, default=40)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--num_queries_one2one", type=int, default=300)
    parser.add_argument("--num_queries_one2many", type=int, default=0)
    parser.add_argument("--k_one2many", type=int, default=5)
    parser.add_argument("--lambda_one2many", type=float, default=1.0)
    parser.add_argument("--enc_layers", type=int, default=6)
    parser.add_argument("--dec_layers", type=int, default=6)
    parser.add_argument("--pe_temperature", type=float, default=2 * np.pi)
    parser.add_argument("--device", default="cuda")
    return parser
''',
    "engine.py": '''
import copy

import wandb  # logging only
import torch
from datasets.coco_eval import CocoEvaluator  # the repository's own package


def train_hybrid(outputs, targets, k_one2many, criterion, lambda_one2many):
    loss_dict = criterion(outputs, targets)
    repeated = copy.deepcopy(targets)
    for t in repeated:
        t["boxes"] = t["boxes"].repeat(k_one2many, 1)
        t["labels"] = t["labels"].repeat(k_one2many)
    extra = {"pred_logits": outputs["pred_logits_one2many"], "pred_boxes": outputs["pred_boxes_one2many"],
             "aux_outputs": outputs["aux_outputs_one2many"]}
    for key, value in criterion(extra, repeated).items():
        loss_dict[key + "_one2many"] = value * lambda_one2many
    return loss_dict
''',
    "datasets/__init__.py": "raise ImportError('the dataset code needs pycocotools and a COCO folder')\n",
    "util/__init__.py": "",
    "util/misc.py": '''
class NestedTensor:
    def __init__(self, tensors, mask):
        self.tensors, self.mask = tensors, mask

    def decompose(self):
        return self.tensors, self.mask


def is_main_process():
    return True
''',
    "models/__init__.py": "from .deformable_detr import build\n",
    "models/ops/__init__.py": "",
    "models/ops/functions/__init__.py": "from .ms_deform_attn_func import MSDeformAttnFunction\n",
    "models/ops/functions/ms_deform_attn_func.py": '''
import torch
from torch.autograd import Function

import MultiScaleDeformableAttention as MSDA  # the compiled extension

CALLS = []


class MSDeformAttnFunction(Function):
    @staticmethod
    def forward(ctx, value, shapes, start, locations, weights, step):
        return MSDA.ms_deform_attn_forward(value, shapes, start, locations, weights, step)


def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    CALLS.append(tuple(value.shape))
    n, _, m, d = value.shape
    mixed = attention_weights.sum((-1, -2))[..., None] * value.mean(1)[:, None]
    return (mixed + sampling_locations.mean((-1, -2, -3))[..., None]).flatten(2)
''',
    "models/ops/modules/__init__.py": "from .ms_deform_attn import MSDeformAttn\n",
    "models/ops/modules/ms_deform_attn.py": '''
import torch
from torch import nn

from ..functions import MSDeformAttnFunction


class MSDeformAttn(nn.Module):
    def __init__(self, d_model=8, n_levels=3, n_heads=2, n_points=2):
        super().__init__()
        self.h, self.l, self.p = n_heads, n_levels, n_points
        self.offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)

    def forward(self, query, value, shapes, start):
        n, q, _ = query.shape
        v = self.value_proj(value).view(n, value.shape[1], self.h, -1)
        loc = self.offsets(query).sigmoid().view(n, q, self.h, self.l, self.p, 2)
        w = self.weights(query).softmax(-1).view(n, q, self.h, self.l, self.p)
        return MSDeformAttnFunction.apply(v, shapes, start, loc, w, 64)
''',
    "models/backbone.py": '''
import torch
import torch.nn.functional as F
from torch import nn

from util.misc import NestedTensor, is_main_process


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 1, bias=False) if is_main_process() else nn.Identity()

    def forward(self, tensor_list):
        out = {}
        for name, x in self.body(tensor_list.tensors).items():
            mask = F.interpolate(tensor_list.mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[name] = NestedTensor(x, mask)
        return out


class Joiner(nn.Sequential):
    def __init__(self):
        super().__init__(Backbone(), nn.Identity())

    def forward(self, tensor_list):
        xs = self[0](tensor_list)
        return [xs[k] for k in sorted(xs)], None
''',
    "models/deformable_detr.py": '''
import torch
from torch import nn

from mmcv.runner import load_checkpoint  # Swin weights only; not installed on a plain CPU machine

from .backbone import Joiner
from .ops.modules import MSDeformAttn


class DeformableDETR(nn.Module):
    def __init__(self, args, channels=(512, 1024, 2048), d=8):
        super().__init__()
        self.backbone = Joiner()
        self.input_proj = nn.ModuleList(nn.Conv2d(c, d, 1) for c in channels)
        self.n1, self.n2 = args.num_queries_one2one, args.num_queries_one2many
        self.query = nn.Embedding(self.n1 + self.n2, d)
        self.attn = MSDeformAttn(d)
        self.class_embed = nn.Linear(d, 91)
        self.bbox_embed = nn.Linear(d, 4)

    def forward(self, samples):
        features, _ = self.backbone(samples)
        srcs = [proj(f.tensors) for proj, f in zip(self.input_proj, features)]
        shapes = torch.as_tensor([s.shape[-2:] for s in srcs])
        start = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
        value = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        n = self.n1 + (self.n2 if self.training else 0)
        hs = self.attn(self.query.weight[None, :n], value, shapes, start)
        logits, boxes = self.class_embed(hs), self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": logits[:, :self.n1], "pred_boxes": boxes[:, :self.n1],
               "aux_outputs": [{"pred_logits": logits[:, :self.n1] * 0.5, "pred_boxes": boxes[:, :self.n1]}]}
        if self.training and self.n2:
            out["pred_logits_one2many"], out["pred_boxes_one2many"] = logits[:, self.n1:], boxes[:, self.n1:]
            out["aux_outputs_one2many"] = []
        return out


class FirstQueriesMatcher(nn.Module):
    def forward(self, outputs, targets):
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]


class SetCriterion(nn.Module):
    def __init__(self, matcher, weight_dict):
        super().__init__()
        self.matcher, self.weight_dict = matcher, weight_dict

    def _losses(self, outputs, targets):
        (src, tgt), = self.matcher(outputs, targets)
        boxes = outputs["pred_boxes"][0, src]
        return {"loss_ce": outputs["pred_logits"].sigmoid().mean(),
                "loss_bbox": (boxes - targets[0]["boxes"][tgt]).abs().sum() / max(len(tgt), 1)}

    def forward(self, outputs, targets):
        losses = self._losses(outputs, targets)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets).items()})
        return losses


def build(args):
    weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_ce_0": 2.0, "loss_bbox_0": 5.0}
    weights.update({k + "_one2many": v for k, v in list(weights.items())})
    return DeformableDETR(args), SetCriterion(FirstQueriesMatcher(), weights), {}
''',
}

SCRIPT = """#!/usr/bin/env bash
set -x
EXP_DIR=exps/fake
PY_ARGS=${{@:1}}

python -u main.py \\
    --output_dir ${{EXP_DIR}} \\
    --with_box_refine \\
    --two_stage \\
    --dim_feedforward 2048 \\
    --num_queries_one2one 300 \\
    --num_queries_one2many {extra} \\
    --k_one2many {k} \\
    --dropout 0.0 \\
    --mixed_selection \\
    --look_forward_twice \\
    ${{PY_ARGS}}
"""


def write_fake_official(root: Path) -> Path:
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip("\n"))
    for model, (extra, k) in (("hybrid", (1500, 6)), ("baseline", (0, 0))):
        path = root / CONFIGS[model]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SCRIPT.format(extra=extra, k=k))
    return root
