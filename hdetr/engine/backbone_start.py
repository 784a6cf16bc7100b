"""Where a new run's backbone starts: ``model.pretrained_backbone=auto`` made concrete, and one line at
start when the backbone starts from random weights (docs/pretrained.md)."""

from __future__ import annotations

from dataclasses import replace

from ..config import AUTO, Config, parse_parts
from ..backbones import BACKBONES
from ..models.backbone_weights import resolve_pretrained


def backbone_start(cfg: Config) -> tuple[Config, str | None]:
    """(the run's config, with ``auto`` replaced by what it chose; the note to print, or None).

    The run stores the choice, so a resumed run builds the same backbone whatever the network does then.
    When ``train.init_from`` brings the backbone, nothing is probed: the ImageNet weights would be
    overwritten, and ``auto`` counts as true (the stem frozen as the ImageNet recipe freezes it).
    """
    m, t = cfg.model, cfg.train
    takes_backbone = bool(t.init_from) and "backbone" in parse_parts(t.init_parts, "train.init_parts", allow_all=True)
    if m.pretrained_backbone == AUTO and takes_backbone and BACKBONES[m.backbone].pretrained_weights \
            and not m.backbone_weights:
        m, why = replace(m, pretrained_backbone=True), None
    else:
        m, why = resolve_pretrained(m, probe_network=True)
    cfg = replace(cfg, model=m)
    if m.pretrained_backbone is True or m.backbone_weights or takes_backbone or m.backbone == "precomputed":
        return cfg, None
    if why is None:
        why = ("model.pretrained_backbone=false" if BACKBONES[m.backbone].pretrained_weights
               else f"backbone {m.backbone} has no ImageNet weights")
    return cfg, f"note: the {m.backbone} backbone starts from random weights ({why})"
