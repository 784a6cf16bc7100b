"""One optimizer step of the official recipe, as `hdetr train` runs it and the trajectory conformance
test replays it (tests/conformance/test_conformance_trajectory.py): forward, the MatchingPlan's losses, their
weighted sum, backward, the non-finite checks, gradient clipping over ``model.parameters()`` and the
optimizer update.

The official ``train_one_epoch`` clips with ``clip_grad_norm_(model.parameters(), max_norm)``: each
Parameter counts once (the decoder's aliases of the heads are the same Parameters) and only those that
have a gradient. What to do with a non-finite step (stop or skip) is the caller's policy: the step only
reports it, identically on every rank.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..hybrid import MatchingPlan
from ..losses import SetCriterion
from . import distributed
from .distributed import DistInfo
from .inference import autocast_context

# fp16: a non-finite gradient is an overflow for the grad scaler to handle (skip the step, lower the
# scale) while the scale is at least this; below it the gradients are non-finite even unscaled: a fault.
MIN_FP16_SCALE = 1.0


@dataclass
class StepResult:
    # Mean loss terms over the micro-batches, "loss" (the weighted total) and "grad_norm" (before
    # clipping); None when the step did not update the weights.
    logs: dict[str, float] | None
    # (what, terms, image ids) of a non-finite loss or gradient; the weights were not updated.
    fault: tuple[str, dict, list[int]] | None = None


def float_outputs(obj):
    """AMP outputs -> fp32, so the losses (focal, GIoU, matching costs) are computed in full precision."""
    if isinstance(obj, torch.Tensor):
        return obj.float()
    if isinstance(obj, dict):
        return {k: float_outputs(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [float_outputs(v) for v in obj]
    return obj


def _detached(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_detached(v) for v in obj]
    return obj


def _to_device(targets: list[dict], device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if hasattr(torch.nn.utils, "get_total_norm"):  # what clip_grad_norm_ computes (torch >= 2.6)
        return torch.nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _clip_with_norm(params: list, max_norm: float, norm: torch.Tensor) -> None:
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def grad_verdict(amp: str, finite: bool, scale: float | None) -> str:
    """What a step's gradients mean: ``ok``; ``overflow`` (fp16 loss scaling overflowed: the grad scaler
    skips the step and lowers its scale; not a fault); ``fault`` (non-finite gradients: stop or skip)."""
    if finite:
        return "ok"
    if amp == "fp16" and scale is not None and scale >= MIN_FP16_SCALE:
        return "overflow"
    return "fault"


class TrainStep:
    """``step(batches, plan)``: forward/backward over the micro-batches ``[(images, mask, targets), ...]``
    (``train.grad_accum`` of them), then one update of ``optimizer``.

    ``net`` is what runs the forward (the DDP wrapper of ``model`` in a multi-process run); ``model``'s
    own parameters are clipped and checked.
    """

    def __init__(self, model: nn.Module, criterion: SetCriterion, optimizer: torch.optim.Optimizer,
                 clip_max_norm: float, *, net: nn.Module | None = None, scaler: torch.amp.GradScaler | None = None,
                 amp: str = "none", device: torch.device | None = None, info: DistInfo | None = None):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.clip_max_norm = clip_max_norm
        self.net = net if net is not None else model
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
        self.amp = amp
        self.device = device if device is not None else next(model.parameters()).device
        self.info = info if info is not None else DistInfo()

    def micro_batch_weights(self, batches) -> list[float]:
        """Loss weights that make ``grad_accum`` micro-batches add up to one batch that many times larger.

        The criterion divides each micro-batch's loss by its own (process-averaged) box count; the big
        batch divides by the count over all of them. Re-weighting by count_i / sum(counts) turns the
        first into the second (exactly, unless a micro-batch has under one box per process).
        """
        if len(batches) == 1:
            return [1.0]
        counts = torch.tensor([float(sum(len(t["labels"]) for t in b[2])) for b in batches], device=self.device)
        if self.info.enabled:
            torch.distributed.all_reduce(counts)
            counts /= self.info.world_size
        return (counts.clamp(min=1) / counts.sum().clamp(min=1)).tolist()

    def __call__(self, batches, plan: MatchingPlan, record: dict | None = None) -> StepResult:
        """One step. Pass a dict as ``record`` to receive, per micro-batch, the forward ``outputs``
        (detached, before the update) and the Hungarian ``matches``, and the ``lr`` of every group.

        Kept whole: the official step's order (forward, losses, backward, non-finite check, clipping,
        update), which the conformance cases check, stays in one place.
        """
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        image_ids: list[int] = []
        weights = self.micro_batch_weights(batches)
        if record is not None:
            record.update(outputs=[], matches=[], lr=[g["lr"] for g in self.optimizer.param_groups])
        for micro, (images, mask, targets) in enumerate(batches):
            images = images.to(self.device, non_blocking=True)
            mask = mask.to(self.device, non_blocking=True)
            targets = _to_device(targets, self.device)
            ids = [int(x["image_id"]) for x in targets if "image_id" in x]
            image_ids += ids
            matches = {} if record is not None else None
            # Gradients are all-reduced once per step, on the last micro-batch.
            sync = self.info.enabled and micro < len(batches) - 1
            with self.net.no_sync() if sync else contextlib.nullcontext():
                with autocast_context(self.device, self.amp):
                    outputs = self.net(images, mask)
                with torch.autocast(device_type=self.device.type, enabled=False):
                    outputs = float_outputs(outputs)
                    losses = self.criterion(outputs, targets, plan, matches=matches)
                    loss = self.criterion.total(losses)
                if record is not None:
                    record["outputs"].append(_detached(outputs))
                    record["matches"].append(matches)
                keys = list(losses)
                values = torch.stack([losses[k].detach().float() for k in keys] + [loss.detach().float()]).cpu()
                bad = not bool(torch.isfinite(values[-1]))
                if distributed.any_true(bad, self.device):
                    terms = {k: float(v) for k, v in zip(keys, values[:-1].tolist()) if not math.isfinite(v)}
                    self.optimizer.zero_grad(set_to_none=True)
                    return StepResult(None, ("loss", terms, ids if bad else []))
                self.scaler.scale(loss * weights[micro]).backward()
            for k, v in zip(keys + ["loss"], values.tolist()):
                sums[k] = sums.get(k, 0.0) + v / len(batches)

        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        # The norm first, clipping only when it is finite: clipping by a NaN norm would turn every
        # gradient into NaN and hide which parameters were non-finite.
        norm = total_norm([p.grad for p in params])
        grad_norm = float(norm)
        if self.clip_max_norm > 0 and math.isfinite(grad_norm):
            _clip_with_norm(params, self.clip_max_norm, norm)
        sums["grad_norm"] = grad_norm
        finite = math.isfinite(grad_norm)
        verdict = grad_verdict(self.amp, finite, None if finite or self.amp != "fp16" else self.scaler.get_scale())
        # "overflow": fp16 loss scaling; scaler.step below skips the update and scaler.update lowers the
        # scale. Not a fault, not counted as a skipped step.
        if verdict == "fault":
            bad = [n for n, p in self.model.named_parameters()
                   if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            terms = {"grad_norm": grad_norm,
                     "parameters": f"{len(bad)} with non-finite gradients, e.g. {', '.join(bad[:3])}",
                     "loss": sums.get("loss")}  # finite: the loss check passed
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(None, ("gradient", terms, image_ids))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepResult(sums)
