"""Exponential moving average of the model weights (optional, ``train.ema``)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """``ema = d * ema + (1 - d) * weights`` after every optimizer step.

    ``d`` ramps up from 0 to ``decay`` over the first few thousand updates: with a fixed 0.9997 the
    average would still be mostly the random initialisation after a short run.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997, warmup: int = 2000):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        # Parameters that do not train (train.freeze, frozen backbone stages) are copied, not averaged:
        # d * p + (1 - d) * p is not p in floating point, and frozen weights must stay bit-identical.
        self.fixed = {n for n, p in model.named_parameters() if not p.requires_grad}

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        src = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point and name not in self.fixed:
                value.mul_(d).add_(src[name].detach(), alpha=1 - d)
            else:
                value.copy_(src[name])

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
