"""Convert an official H-Deformable-DETR checkpoint to hdetr's format.

Reads OFFICIAL.pth (a dict with 'model' and usually 'args'; loaded with weights_only=True, so it can
not run code) and writes OUT/model.safetensors + OUT/config.yaml. Pass --config to supply or override
settings when the checkpoint carries no 'args'.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import CheckpointError, load_official_checkpoint, save_model
from ..config import ConfigError, build_config
from ..errors import UserError


def add_arguments(p):
    p.add_argument("official", type=Path, help="official checkpoint (.pth)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.topk=300")
    p.add_argument("--class-names", type=Path, default=None, help="text file with one class name per line")


def run(args) -> int:
    from ..models import WeightsMismatchError, build_model_with_weights

    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"{args.out}: exists and is not an empty folder; convert writes a new model folder")

    try:
        cfg, state = load_official_checkpoint(args.official)
        if args.overrides:
            cfg = build_config({**cfg.to_dict()}, args.overrides)
        model = build_model_with_weights(cfg, state, args.official)
    except (CheckpointError, ConfigError, WeightsMismatchError) as e:
        raise UserError(str(e)) from None
    names = None
    if args.class_names:
        names = [l.strip() for l in args.class_names.read_text().splitlines() if l.strip()]
    save_model(args.out, cfg, model.state_dict(), class_names=names)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"converted {args.official} -> {args.out} ({n:,} trainable parameters, scheme {cfg.hybrid.scheme})")
    return 0
