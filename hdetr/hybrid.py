"""The three hybrid-matching schemes, decided in one place.

This module owns the hybrid decision; everything else consumes it:

- ``query_groups(cfg)``: how many queries the decoder runs, in which groups (``QueryGroups``); the model
  builds and masks them, and drops the extra group at inference (``QueryGroups.active``).
- ``layer_outputs(outputs, group)``: where each group's per-layer predictions sit in the model's output
  dict (the official layout), for the criterion and the benchmarks.
- ``matching_plan(cfg, epoch)``: per training step, which outputs are matched one-to-one (each ground
  truth once) and which one-to-many (each ground truth repeated K times); the criterion follows it.

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
class QueryGroups:
    """Sizes of the decoder's query groups: the one-to-one group (the only one at inference) and the
    training-only one-to-many group of the branch scheme (0 otherwise)."""

    one2one: int
    one2many: int = 0

    @property
    def total(self) -> int:
        return self.one2one + self.one2many

    def active(self, training: bool) -> QueryGroups:
        """The groups of a forward pass: the extra group exists only in training."""
        return self if training else QueryGroups(self.one2one)


def query_groups(cfg: Config) -> QueryGroups:
    """The query groups a config asks for (only the branch scheme adds a group)."""
    extra = cfg.hybrid.num_queries_one2many if cfg.hybrid.scheme == "branch" else 0
    return QueryGroups(cfg.model.num_queries, extra)


def layer_outputs(outputs: dict, group: str = "one2one") -> list[dict]:
    """One query group's per-layer predictions from the model's output dict, aux layers first and the
    last layer last. ``group``: "one2one" or "one2many" (the official output keys carry a suffix)."""
    suffix = "" if group == "one2one" else "_one2many"
    last = {"pred_logits": outputs["pred_logits" + suffix], "pred_boxes": outputs["pred_boxes" + suffix]}
    return outputs["aux_outputs" + suffix] + [last]


@dataclass(frozen=True)
class MatchingPlan:
    layer_repeats: tuple[int, ...]  # main query group, one entry per decoder layer: K, or 1 for one-to-one
    branch_repeats: int = 0  # extra (one-to-many) query group: K, or 0 when there is no such group
    branch_weight: float = 0.0  # lambda


def is_one2many_epoch(epoch: int, epochs: int, rho: float) -> bool:
    """The epoch scheme's rule: epoch ``epoch`` (0-based) of ``epochs`` is trained one-to-many when e < rho * T."""
    return epoch < rho * epochs


def one2many_epoch_count(epochs: int, rho: float) -> int:
    """Number of leading epochs trained one-to-many by the epoch scheme."""
    return sum(1 for e in range(epochs) if is_one2many_epoch(e, epochs, rho))


def matching_plan(cfg: Config, epoch: int) -> MatchingPlan:
    """The plan for a step in ``epoch`` (0-based) of a ``cfg.train.epochs`` schedule."""
    h, layers = cfg.hybrid, cfg.model.dec_layers
    one2one = (1,) * layers
    if h.scheme == "none":
        return MatchingPlan(one2one)
    if h.scheme == "branch":
        return MatchingPlan(one2one, branch_repeats=h.k, branch_weight=h.lambda_one2many)
    if h.scheme == "epoch":
        return MatchingPlan((h.k,) * layers if is_one2many_epoch(epoch, cfg.train.epochs, h.epoch_ratio) else one2one)
    if h.scheme == "layer":
        l1 = h.one2many_layers
        return MatchingPlan((h.k,) * l1 + (1,) * (layers - l1))
    raise ValueError(f"unknown hybrid scheme {h.scheme!r}")
