"""Replays a conformance case of kind "trajectory" through hdetr's own training step.

A trajectory case is several optimizer steps of the official main.py loop with a one-batch data loader
per epoch (every step is an epoch, so the lr schedule steps after each one). Everything comes from the
case: the model, loss and optimizer settings from ``manifest.config.args``, the number of steps from
``manifest.derived.num_steps``, initial weights from checkpoint.pth, each step's backbone features,
mask and targets from inputs.safetensors. What runs is hdetr's: ``build_optimizer``/``build_scheduler``
(engine/optim.py), ``matching_plan`` and ``TrainStep`` (engine/step.py), the code `hdetr train` runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from support.conformance import flatten_outputs
from hdetr.weights import convert_official_state_dict, official_args_to_config, official_key_to_hdetr, safe_torch_load
from hdetr.engine.optim import build_optimizer, build_scheduler
from hdetr.engine.step import TrainStep
from hdetr.hybrid import matching_plan
from hdetr.losses import SetCriterion
from hdetr.models import build_model
from hdetr.models.backbone import PrecomputedFeatures


class StoredFeatures(PrecomputedFeatures):
    """Stands in for the backbone body as the official harness does: returns the current step's maps."""

    def __init__(self, channels):
        super().__init__(tuple(channels))
        self.features: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.features


@dataclass
class StepRecord:
    logs: dict[str, float]  # loss terms, "loss", "grad_norm" as the trainer logs them
    lr: list[float]  # lr of every optimizer group during the step
    outputs: dict[str, torch.Tensor]  # flattened forward outputs, before the update
    matches: dict
    num_gt: list[int]
    without_grad: list[str]  # parameters that got no gradient


@dataclass
class TrajectoryRun:
    manifest: dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    steps: list[StepRecord] = field(default_factory=list)
    group_names: list[list[str]] = field(default_factory=list)  # hdetr parameter names of each group


def official_to_hdetr_name(manifest: dict, official: str) -> str:
    """hdetr's name of an official parameter name (aliases of the decoder heads resolved first)."""
    official = manifest.get("aliases", {}).get(official, official)
    name = official_key_to_hdetr(official)
    if not name:
        raise AssertionError(f"official name {official} has no hdetr counterpart")
    return name


def step_inputs(inputs: dict[str, torch.Tensor], s: int):
    p = f"step{s}/"
    feature_keys = sorted((k for k in inputs if k.startswith(p + "features.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    features = [inputs[k].float() for k in feature_keys]
    mask = inputs[p + "image_mask"].bool()
    targets = []
    while f"{p}targets.{len(targets)}.labels" in inputs:
        b = f"{p}targets.{len(targets)}."
        t = {k[len(b):]: v for k, v in inputs.items() if k.startswith(b)}
        t["boxes"] = t["boxes"].float().reshape(-1, 4)
        t["labels"] = t["labels"].long()
        targets.append(t)
    return features, mask, targets


def run_trajectory(case: Path, attention_impl: str | None = None) -> TrajectoryRun:
    manifest = json.loads((case / "manifest.json").read_text())
    args = manifest["config"]["args"]
    if manifest["optimizer"]["class"] != "AdamW" or args.get("sgd"):
        raise AssertionError(f"{case.name}: hdetr trains with AdamW only, the case uses {manifest['optimizer']['class']}")
    if args.get("lr_drop_epochs"):
        raise AssertionError(f"{case.name}: hdetr's schedule is StepLR; the case uses lr_drop_epochs")
    official_state = {k: v.float() for k, v in safe_torch_load(case / "checkpoint.pth")["model"].items()}
    cfg = official_args_to_config(args, official_state)
    # The case stores the backbone's features: a derived config that takes them instead of a backbone.
    cfg = replace(cfg, model=replace(cfg.model, backbone="precomputed",
                                     backbone_channels=list(manifest["derived"]["backbone_num_channels"])))

    torch.manual_seed(0)
    backbone = StoredFeatures(cfg.model.backbone_channels)
    model = build_model(cfg, backbone=backbone)
    if attention_impl is not None:
        model.set_attention_impl(attention_impl)
    missing, unexpected = model.load_state_dict(convert_official_state_dict(official_state), strict=False)
    if missing or unexpected:
        raise AssertionError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.train()

    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    step = TrainStep(model, SetCriterion(cfg.model.num_classes, cfg.loss), optimizer, cfg.train.clip_max_norm)
    names = {id(p): n for n, p in model.named_parameters()}
    run = TrajectoryRun(manifest, model, optimizer,
                        group_names=[[names[id(p)] for p in g["params"]] for g in optimizer.param_groups])

    inputs = load_file(str(case / "inputs.safetensors"))
    for s in range(manifest["derived"]["num_steps"]):
        features, mask, targets = step_inputs(inputs, s)
        backbone.features = features
        images = torch.zeros(mask.shape[0], 3, *mask.shape[1:])  # only the replaced body would read it
        record: dict = {}
        # One batch per epoch: step s runs in epoch s, and the schedule steps after it.
        result = step([(images, mask, targets)], matching_plan(cfg, epoch=s), record=record)
        if result.fault is not None:
            raise AssertionError(f"step {s}: non-finite {result.fault[0]}: {result.fault[1]}")
        run.steps.append(StepRecord(
            logs=result.logs, lr=record["lr"], outputs=flatten_outputs(record["outputs"][0]),
            matches=record["matches"][0], num_gt=[len(t["labels"]) for t in targets],
            without_grad=[n for n, p in model.named_parameters() if p.requires_grad and p.grad is None],
        ))
        scheduler.step()
    return run
