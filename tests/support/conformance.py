"""Runs one conformance case (a folder made by the official H-Deformable-DETR) through hdetr.

Everything about a case comes from its manifest.json and files; nothing is hard-coded here.
Which cases there are: support/conformance_cases.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from hdetr.weights import (
    convert_official_state_dict,
    official_args_to_config,
    official_key_to_hdetr,
    safe_torch_load,
)
from hdetr.hybrid import matching_plan
from hdetr.losses import SetCriterion
from hdetr.models import build_model
from hdetr.postprocess import postprocess


@dataclass
class CaseRun:
    manifest: dict
    train_out: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    loss_total: torch.Tensor | None = None
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # by official parameter name
    grad_norm: float = 0.0
    matches: dict = field(default_factory=dict)
    eval_out: dict[str, torch.Tensor] = field(default_factory=dict)
    post: list[dict] = field(default_factory=list)
    num_gt: list[int] = field(default_factory=list)


def flatten_outputs(out: dict, prefix: str = "out") -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            flat[f"{prefix}.{key}"] = value
        elif isinstance(value, dict):
            flat.update(flatten_outputs(value, f"{prefix}.{key}"))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                flat.update(flatten_outputs(item, f"{prefix}.{key}.{i}"))
    return flat


def load_inputs(case: Path):
    inputs = load_file(str(case / "inputs.safetensors"))
    feature_keys = sorted((k for k in inputs if k.startswith("features.")), key=lambda k: int(k.split(".")[1]))
    features = [inputs[k].float() for k in feature_keys]
    mask = inputs["image_mask"].bool()
    targets = []
    b = 0
    while f"targets.{b}.labels" in inputs:
        t = {name: inputs[f"targets.{b}.{name}"] for name in ("labels", "boxes", "orig_size", "size") if f"targets.{b}.{name}" in inputs}
        t["boxes"] = t["boxes"].float().reshape(-1, 4)
        t["labels"] = t["labels"].long()
        targets.append(t)
        b += 1
    return features, mask, targets, inputs["orig_target_sizes"].long()


def run_case(case: Path, attention_impl: str | None = None) -> CaseRun:
    """Run a case; ``attention_impl`` (fast | reference) switches the model's computation path (the
    config keeps its ``model.attention_impl``)."""
    manifest = json.loads((case / "manifest.json").read_text())
    args = manifest["config"]["args"]
    official_state = {k: v.float() for k, v in safe_torch_load(case / "checkpoint.pth")["model"].items()}
    cfg = official_args_to_config(args, official_state)
    derived = manifest.get("derived", {})
    # The case stores the backbone's features: a derived config that takes them instead of a backbone.
    cfg = replace(cfg, model=replace(cfg.model, backbone="precomputed",
                                     backbone_channels=list(derived["backbone_num_channels"])))
    torch.manual_seed(0)
    model = build_model(cfg)
    if attention_impl is not None:
        model.set_attention_impl(attention_impl)
    state = convert_official_state_dict(official_state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AssertionError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")

    features, mask, targets, orig_sizes = load_inputs(case)
    run = CaseRun(manifest=manifest, num_gt=[len(t["labels"]) for t in targets])

    model.train()
    criterion = SetCriterion(cfg.model.num_classes, cfg.loss)
    out = model(None, mask, features=features)
    run.train_out = flatten_outputs(out)
    run.losses = criterion(out, targets, matching_plan(cfg, epoch=0), matches=run.matches)
    run.loss_total = criterion.total(run.losses)
    run.loss_total.backward()
    # The official log value: total L2 norm of all gradients before clipping.
    run.grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    ours = dict(model.named_parameters())
    for official in official_state:
        name = official_key_to_hdetr(official)
        if name in ours and ours[name].grad is not None:
            run.grads[official] = ours[name].grad.detach().clone()

    model.eval()
    with torch.no_grad():
        eout = model(None, mask, features=features)
    run.eval_out = flatten_outputs(eout)
    run.post = postprocess(eout, orig_sizes, topk=cfg.model.topk)
    return run
