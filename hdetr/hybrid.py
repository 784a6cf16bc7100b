"""The three hybrid-matching schemes, decided in one place.

A scheme answers one question per training step: which outputs are matched one-to-one (each ground
truth once) and which one-to-many (each ground truth repeated K times)? The answer is a
``MatchingPlan``; the criterion (losses.py) follows it and the model never needs to know.

- ``branch`` (the official H-DETR): an extra group of queries, trained one-to-many with weight lambda,
  next to the one-to-one group; the extra group is dropped at inference.
- ``epoch``: one group; one-to-many for epochs ``e < rho * T``, one-to-one afterwards.
- ``layer``: one group; one-to-many targets for the first L1 decoder layers, one-to-one for the rest.
- ``none``: plain one-to-one Deformable-DETR.

The two-stage encoder proposals are matched one-to-one under every scheme, as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config


@dataclass(frozen=True)
class MatchingPlan:
    layer_repeats: tuple[int, ...]  # main query group, one entry per decoder layer: K, or 1 for one-to-one
    branch_repeats: int = 0  # extra (one-to-many) query group: K, or 0 when there is no such group
    branch_weight: float = 0.0  # lambda
    enc_repeats: int = 1

    @property
    def uses_one2many(self) -> bool:
        return self.branch_repeats > 0 or any(r > 1 for r in self.layer_repeats)


def one2many_epoch_count(epochs: int, rho: float) -> int:
    """Number of leading epochs trained one-to-many by the epoch scheme (epoch e < rho * T)."""
    return sum(1 for e in range(epochs) if e < rho * epochs)


def matching_plan(cfg: Config, epoch: int) -> MatchingPlan:
    """The plan for a step in ``epoch`` (0-based) of a ``cfg.train.epochs`` schedule."""
    h, layers = cfg.hybrid, cfg.model.dec_layers
    one2one = (1,) * layers
    if h.scheme == "none":
        return MatchingPlan(one2one)
    if h.scheme == "branch":
        return MatchingPlan(one2one, branch_repeats=h.k, branch_weight=h.lambda_one2many)
    if h.scheme == "epoch":
        return MatchingPlan((h.k,) * layers if epoch < h.epoch_ratio * cfg.train.epochs else one2one)
    if h.scheme == "layer":
        l1 = h.one2many_layers
        return MatchingPlan((h.k,) * l1 + (1,) * (layers - l1))
    raise ValueError(f"unknown hybrid scheme {h.scheme!r}")
