"""Convert a checkpoint to an hdetr model folder: hdetr convert CHECKPOINT OUT [section.key=value ...].

CHECKPOINT is an official H-Deformable-DETR .pth (a dict with 'model' and usually 'args'; loaded with
weights_only=True, so it can not run code), or anything else ``hdetr.weights.load_weights`` reads
(a run folder, last.pt / best.pt). Writes OUT/model.safetensors + OUT/config.yaml. Overrides supply or
change settings, e.g. when an official checkpoint carries no 'args'.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p):
    p.add_argument("official", type=Path, help="official checkpoint (.pth), run folder or last.pt / best.pt")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.topk=300")
    p.add_argument("--class-names", type=Path, default=None, help="text file with one class name per line")


def run(args) -> int:
    from ..weights import load_weights, save_model
    from ..config import ConfigError, build_config
    from ..errors import UserError
    from ..models import WeightsMismatchError, build_model_with_weights
    from ..outputs import check_writable

    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"{args.out}: exists and is not an empty folder; convert writes a new model folder")
    check_writable(args.out, "out")
    loaded = load_weights(args.official)
    try:
        cfg = build_config({**loaded.cfg.to_dict()}, args.overrides) if args.overrides else loaded.cfg
        model = build_model_with_weights(cfg, loaded.state, args.official)
    except (ConfigError, WeightsMismatchError) as e:
        raise UserError(str(e)) from None
    names = loaded.class_names or None
    if args.class_names:
        names = [l.strip() for l in args.class_names.read_text().splitlines() if l.strip()]
    meta = {"category_map": json.dumps(loaded.category_map.to_dict())} if loaded.category_map else None
    save_model(args.out, cfg, model.state_dict(), class_names=names, extra_meta=meta)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"converted {args.official} -> {args.out} ({n:,} trainable parameters, scheme {cfg.hybrid.scheme})")
    return 0
