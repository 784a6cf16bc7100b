"""Train a detector: hdetr train CONFIG [section.key=value ...] [--out DIR] [--resume].

CONFIG is a preset name (e.g. r50_hybrid_branch_12ep, synthetic_small) or a YAML file. The run folder
gets config.yaml, metrics.jsonl, last.pt, best.pt, curves.png and model/ (for eval/predict). For
several GPUs or nodes launch it with torchrun, e.g. torchrun --nproc_per_node 8 -m hdetr.cli train ...

The small_data preset takes its query counts, input scale and schedule from the training set's
annotations (hdetr.data.recipe; each choice is printed with its reason; a key you set is yours;
--no-recipe keeps the preset's values).

train.init_from=PATH starts a new run from a trained detector (model or run folder, last.pt/best.pt,
official .pth) and writes init_report.json; train.freeze=backbone keeps parts fixed (docs/finetune.md).

SIGINT/SIGTERM finish the current step, save last.pt and exit with status 130/143; continue with
--resume. Exit status 2: a config, data or non-finite-loss error (the message says which).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError, load_config
from ..errors import UserError
from ..devices import add_device_argument
from ..threads import add_threads_argument, apply_threads


def add_arguments(p):
    p.add_argument("config", help="preset name or YAML config file")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.train=path/to/dataset train.epochs=24")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.add_argument("--no-recipe", action="store_true",
                   help="small_data: keep the preset's values instead of the ones chosen from the data")
    add_threads_argument(p)


def _with_data_choices(args) -> list[str]:
    """The overrides, with the data's own settings under them for the small_data preset."""
    from ..data.recipe import config_overrides

    items, chosen = config_overrides(args.config, args.overrides, args.no_recipe)
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        for c in chosen:
            print(f"data chose {c.key}={c.value}: {c.why}", flush=True)
    return items


def run(args) -> int:
    from ..engine import distributed
    from ..engine.train import train

    apply_threads(args.threads)
    try:
        cfg = load_config(args.config, _with_data_choices(args))
    except ConfigError as e:
        raise UserError(str(e)) from None
    out = args.out or Path("runs") / Path(args.config).stem
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a run folder")
    from ..outputs import check_writable, refuse_input_path

    data = [p for spec in (cfg.data.train, cfg.data.val) if spec
            for p in ([Path(spec)] if Path(spec).exists() else map(Path, spec.split(":"))) if p.exists()]
    refuse_input_path(out, data + [Path(p) for p in (args.config,) if Path(p).is_file()])
    check_writable(out)
    try:
        result = train(cfg, out, resume=args.resume, device=args.device,
                       progress=False if args.no_progress else None)
        is_main = distributed.current().is_main
    finally:
        distributed.cleanup()
    if is_main:
        best = f", best {cfg.train.best_metric} {result.best_ap:.3f}" if result.best_ap is not None else ""
        if result.early_stop:
            e = result.early_stop
            best += (f"; stopped early after epoch {e['epoch'] + 1} of {cfg.train.epochs} ({e['metric']} did not "
                     f"improve for {e['evaluations_without_improvement']} evaluations, train.patience)")
        skipped = f", {result.skipped_steps} non-finite steps skipped" if result.skipped_steps else ""
        if result.bad_image_steps:
            skipped += f", {result.bad_image_steps} steps skipped for unreadable images"
        print(f"trained {result.steps} steps{best}{skipped}; run folder {result.out_dir}, model {result.model_dir}")
    return 0
