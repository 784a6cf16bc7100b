"""Ablation of the hybrid matching schemes: the paper's one-to-one baseline against branch, epoch and layer.

Every scheme trains the same small model (two-stage Deformable-DETR with box refinement) on the same
synthetic dataset with the same schedule, for several seeds. The budget is a regime of
``benchmarks.regimes``: ``paper`` (default: ImageNet EfficientNet-Lite0, COCO-like scenes) or ``toy``
(``tiny`` backbone from scratch on flat shapes, ``ablation_setup.DEFAULT``):

- ``baseline``: one-to-one matching, N queries (the config's ``hybrid.scheme=none``);
- ``baseline_more_queries``: one-to-one matching with N + M queries (as many as the hybrid total, ``none``);
- ``branch``: N one-to-one queries + M one-to-many queries (targets repeated K times, weight lambda);
  the extra group is dropped at inference;
- ``epoch``: one group of N + M queries, one-to-many for the first rho of the epochs, then one-to-one;
- ``layer``: one group of N + M queries, one-to-many in the first L1 decoder layers.

Each run is evaluated on the validation split after every epoch (the AP curve, against iterations and
against training seconds: data loading + forward/backward/update, evaluation not counted). At the end
the inference speed (eval mode, batch 1, one-to-one queries only) and GFLOPs of one inference forward
are measured side by side, and ``ablation.json``, ``ablation.png`` and a table are written.

The jobs live in their own modules: ``ablation_setup`` (budget, scheme configs), ``ablation_runs`` (one
run, the pool), ``ablation_measure`` (side-by-side speed, FLOPs, NMS diagnostic), ``ablation_report``
(aggregation, table, plot); this module is the command. Runs are stored per (scheme, seed) under ``--work``; running the command again skips the finished
ones and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

from .ablation_setup import Budget, CLOCKS, PRESET, SCHEMES, check_budget, common_overrides, run_overrides, scheme_overrides, scheme_queries
from .ablation_runs import read_result, run_pending, run_s_per_iter
from .ablation_measure import load_trained, format_nms_table, inference_flops, inference_speed, nms_diagnostic, train_step_speed
from .ablation_report import aggregate, format_table, machine_description, plot, plot_marks

# -- the command ---------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    from .regimes import REGIMES, regime_help

    p.add_argument("--regime", choices=sorted(REGIMES), default="paper", help=regime_help())
    p.add_argument("--quick", action="store_true",
                   help="an end-to-end check of the regime in minutes (few images and epochs, 1 seed): too short to rank schemes")
    p.add_argument("--seeds", type=int, default=None, help="seeds per scheme (default: 3, 1 with --quick)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                   help="where ablation.json and ablation.png go (default: benchmarks/results)")
    p.add_argument("--work", type=Path, default=Path("runs/bench/ablation"),
                   help="run folders (checkpoints, logs, per-run results) and the dataset (default: runs/bench/ablation)")
    p.add_argument("--name", default=None,
                   help="output file stem (default: ablation_paper / ablation for the toy regime; _quick appended with --quick)")
    p.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated subset of {', '.join(SCHEMES)}")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="change a budget setting, e.g. --set k=4 --set epochs=24 (repeatable); "
                        f"keys: {', '.join(f.name for f in dataclasses.fields(Budget))}")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time, each in its own process (default: 2 on CPU, 1 on CUDA); "
                        "0 trains in this process, one run after the other")
    p.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                   help="how training and inference time is measured: cpu = CPU seconds of the single-threaded "
                        "process (default on CPU: steady when other jobs share the machine), wall = elapsed "
                        "seconds (default on CUDA)")
    p.add_argument("--timing-rounds", type=int, default=None,
                   help="timed rounds of the side-by-side training-step and inference timings (default: 3, 1 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run on CPU (default: CPU cores / jobs)")


def regime_output_name(regime: str, quick: bool) -> str:
    # The toy regime keeps its historical file names (benchmarks/results/ablation.json).
    stem = "ablation" if regime == "toy" else f"ablation_{regime}"
    return stem + ("_quick" if quick else "")


def _apply_settings(b: Budget, settings: list[str]) -> Budget:
    """``--set KEY=VALUE`` items on a budget, each value read by the config's own rules
    (hdetr.config); a float may also be a fraction such as 2/3."""
    from typing import get_origin, get_type_hints

    from hdetr.config import ConfigError, coerce_value
    from hdetr.errors import UserError

    types = get_type_hints(Budget)
    changes = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise UserError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        typ = types[key]
        try:
            if get_origin(typ) is tuple:  # 64 / 64,80 / [64,80] / (64,80)
                changes[key] = tuple(coerce_value("[" + raw.strip("()[] ") + "]", list[int], f"--set {key}"))
            elif typ is float and "/" in raw:
                a, _, c = raw.partition("/")
                changes[key] = coerce_value(a, float, f"--set {key}") / coerce_value(c, float, f"--set {key}")
            else:
                changes[key] = coerce_value(raw, typ, f"--set {key}")
        except (ConfigError, ZeroDivisionError) as e:
            raise UserError(f"--set {item!r}: {e}") from None
    return dataclasses.replace(b, **changes)


def _ensure_dataset(work: Path, b: Budget) -> Path:
    from hdetr.data.synthetic import write_synthetic_dataset

    if b.data:
        return Path(b.data)
    style = "" if b.dataset == "shapes" else f"{b.dataset}-"
    smallest = f"-min{b.min_object:g}" if b.min_object else ""
    data_dir = work / f"data-{style}{b.image_size}px-{b.train_images}-{b.val_images}-seed{b.data_seed}{smallest}"
    stamp = data_dir / "complete.json"
    if not stamp.exists():
        summary = write_synthetic_dataset(data_dir, b.train_images, b.val_images, b.image_size, b.data_seed,
                                          style=b.dataset, min_object_size=b.min_object)
        stamp.write_text(json.dumps(summary, indent=1) + "\n")
    return data_dir


def run_ablation(args) -> int:
    import torch

    from .report import write_report
    from hdetr.errors import UserError

    from .regimes import regime_budget

    budget = regime_budget(args.regime, args.quick)
    budget = _apply_settings(budget, args.settings)
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError("--seeds must be >= 1")
        budget = dataclasses.replace(budget, seeds=args.seeds)
    check_budget(budget)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown or not schemes:
        raise UserError(f"--schemes: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SCHEMES)}")
    schemes = [s for s in SCHEMES if s in schemes]

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.startswith("cuda")
    jobs = args.jobs if args.jobs is not None else (1 if on_cuda else 2)
    if jobs < 0:
        raise UserError("--jobs must be >= 0")
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(jobs, 1))
    clock = args.clock or ("wall" if on_cuda else "cpu")
    if clock == "cpu" and on_cuda:
        raise UserError("--clock cpu measures CPU seconds: use --clock wall with CUDA")
    name = args.name or regime_output_name(args.regime, args.quick)

    def log(msg: str) -> None:
        print(msg, flush=True)

    key = budget.key()
    work = args.work / key
    work.mkdir(parents=True, exist_ok=True)
    data_dir = _ensure_dataset(args.work, budget)
    log(f"hdetr bench ablation: {len(schemes)} schemes x {budget.seeds} seed(s), {budget.epochs} epochs of "
        f"{budget.train_images} images ({budget.epochs * (budget.train_images // budget.batch_size)} iterations "
        f"of batch {budget.batch_size}); runs in {work}")

    # Seed-major order: every scheme gets seed 0 before any gets seed 1, so a cut-short session still
    # compares all schemes, and slow phases of a shared machine fall on all schemes alike.
    specs, results = [], {s: [] for s in schemes}
    for seed in range(budget.seeds):
        for scheme in schemes:
            run_dir = work / scheme / f"seed{seed}"
            res = read_result(run_dir, key)
            if res is not None:
                results[scheme].append(res)
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            specs.append({"scheme": scheme, "seed": seed, "run_dir": str(run_dir), "budget_key": key,
                          "overrides": run_overrides(scheme, seed, budget, data_dir), "device": device,
                          "threads": None if on_cuda else threads})
    skipped = sum(len(v) for v in results.values())
    if skipped:
        log(f"  {skipped} finished run(s) found, skipped")
    start = time.perf_counter()
    for res in run_pending(specs, jobs, log):
        results[res["scheme"]].append(res)
    for rs in results.values():
        rs.sort(key=lambda r: r["seed"])
    if specs:
        log(f"  trained {len(specs)} run(s) in {time.perf_counter() - start:.0f} s")

    # Training step time, inference speed and FLOPs, measured side by side.
    dev = torch.device(device)
    if not on_cuda:
        torch.set_num_threads(threads)
    rounds = max(1, args.timing_rounds or (1 if args.quick else 3))
    log("  timing training steps side by side ...")
    step_s = train_step_speed({s: run_overrides(s, 0, budget, data_dir) for s in schemes}, device, work,
                              rounds=rounds, steps=1 if rounds == 1 else 2, clock=clock)
    log("  timing inference side by side ...")
    models, gflops = {}, {}
    for scheme in schemes:
        model, _ = load_trained(work / scheme / "seed0", dev)
        models[scheme] = model
        gflops[scheme] = inference_flops(model, budget.image_size, dev)
    infer = inference_speed(models, budget.image_size, dev, rounds=rounds + 2, per_round=5 if rounds == 1 else 10,
                            clock=clock)
    del models

    config = {
        "command": f"hdetr bench ablation --regime {args.regime}" + (" --quick" if args.quick else "")
                   + (f" --seeds {args.seeds}" if args.seeds is not None else "")
                   + "".join(f" --set {s}" for s in args.settings)
                   + (f" --schemes {','.join(schemes)}" if len(schemes) < len(SCHEMES) else ""),
        "budget": dataclasses.asdict(budget),
        "budget_key": key,
        "iterations": budget.epochs * (budget.train_images // budget.batch_size),
        "queries": {s: list(scheme_queries(s, budget)) for s in schemes},
        "overrides": {s: scheme_overrides(s, budget) for s in schemes},
        "common_overrides": [o for o in common_overrides(budget, Path("DATA"), 0) if not o.startswith("train.seed")],
        "base_preset": PRESET,
        "regime": args.regime,
        "dataset": budget.data or f"write_synthetic_dataset(train={budget.train_images}, val={budget.val_images}, "
                   f"size={budget.image_size}, seed={budget.data_seed}, style={budget.dataset!r}"
                                   + (f", min_object_size={budget.min_object:g})" if budget.min_object else ")"),
        "dataset_summary": (json.loads((data_dir / "complete.json").read_text())
                            if (data_dir / "complete.json").exists() else None),
        "clock": clock,
        "clock_note": "cpu: CPU seconds of the single-threaded training process (what one dedicated core "
                      "takes; steady when other jobs share the CPU); wall: elapsed seconds",
        "curve": "mean over seeds: [iteration, training seconds by the clock (data + forward/backward/update; "
                 "evaluation excluded), val AP] after every epoch",
        "AP": "final val AP per seed (COCO AP@[.5:.95], faster-coco-eval)",
        "train_s_per_iter": "training seconds (by the clock) / iterations of the runs, mean over seeds",
        "train_s_per_iter_wall": {s: statistics.fmean(run_s_per_iter(r, "wall") for r in results[s])
                                  for s in schemes},
        "train_s_per_iter_side_by_side": {s: step_s[s] for s in schemes},
        "train_s_per_iter_side_by_side_note": "one training step (batch, forward, loss, backward, update) of "
                                              "each scheme timed in turn in one process, median over rounds "
                                              "(3 of 2 steps by default, 1 of 1 with --quick); fairer ratios than the "
                                              "runs' own times on a shared machine",
        "peak_mem_mb": "CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS of the training process "
                       "(includes the interpreter and libraries), mean over seeds",
        "infer_img_per_s": f"eval mode (one-to-one queries only), batch 1, {budget.image_size} px, model forward "
                           f"without post-processing, seed-0 models timed in turn, by the clock",
        "gflops": "one eval-mode forward at batch 1 by torch.utils.flop_counter.FlopCounterMode (convolutions "
                  "and matrix products; the deformable sampling is not counted)",
    }
    doc = aggregate(results, infer, gflops, config, machine_description(device, threads, jobs), clock)
    iters_per_epoch = budget.train_images // budget.batch_size
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / f"{name}.json", args.out / f"{name}.png"
    write_report(json_path, doc)
    plot(results, png_path, f"hybrid matching ablation: {budget.epochs} epochs x {budget.train_images} synthetic "
                            f"images, {budget.seeds} seed(s), N={budget.num_queries}, M={budget.num_queries_one2many}, "
                            f"K={budget.k}",
         clock=clock, marks=plot_marks(budget, iters_per_epoch, schemes))
    log("  diagnostic: AP after NMS ...")
    diag = {"iou": 0.7, "note": "final models, val AP with and without class-wise NMS at IoU 0.7 over the top-k "
                                "detections; the comparison itself is NMS-free, as in the paper",
            "schemes": {}}
    for scheme in schemes:
        per_seed = [nms_diagnostic(work / scheme / f"seed{r['seed']}", dev, data_dir) for r in results[scheme]]
        diag["schemes"][scheme] = {k: [d[k] for d in per_seed] for k in ("AP", "AP_nms", "AP50_nms", "AP75_nms")}
    diag_path = args.out / f"{name}_nms.json"
    write_report(diag_path, diag)
    log("")
    log(format_table(doc))
    log("")
    log(format_nms_table(diag))
    log(f"\nwrote {json_path}, {png_path} and {diag_path}")
    return 0


run = run_ablation  # the hdetr.commands.bench convention: each benchmark module has run(args)
