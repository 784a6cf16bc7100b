"""The weights' moving average: its decay ramps up over ``train.ema_warmup`` steps."""

import math

import torch
from torch import nn

from hdetr.config import load_config
from hdetr.engine.ema import ModelEMA


def _blend_after_one_update(warmup: int) -> tuple[torch.Tensor, float]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    ema = ModelEMA(model, decay=0.9, warmup=warmup)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / warmup))
    return ema.module.weight - (d * w0 + (1 - d) * model.weight.detach()), d


def test_the_decay_ramps_over_the_warmup_steps():
    for warmup in (1, 50, 2000):
        residual, _ = _blend_after_one_update(warmup)
        assert residual.abs().max() < 1e-6
    # a short warmup averages sooner: after one step it keeps more of the start than a long one
    assert _blend_after_one_update(1)[1] > 0.5 > _blend_after_one_update(2000)[1]


def test_the_small_data_preset_averages_within_a_short_run():
    t = load_config("small_data").train
    assert t.ema
    d = t.ema_decay * (1 - math.exp(-300 / t.ema_warmup))
    assert d > 0.9  # after 300 steps (a few CPU-minutes) the average spans tens of steps, not one
