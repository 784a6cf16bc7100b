"""Speed of the full-size R50 H-DETR on this machine (Benchmarks section 2).

The backbone is replaced by precomputed stride-8/16/32 feature maps of one 800x1066 image (or, with
``--real-backbone``, a randomly initialised ResNet-50 runs on the image). Measured, median over
``--repeats`` after one warm-up (none with ``--quick``):

- a training step of the hybrid-branch model (300 one-to-one + 1500 one-to-many queries) and of the
  one-to-one baseline (300 queries), split into forward, loss (matching included), backward and
  optimizer step (gradient clipping + AdamW);
- the matcher alone (every Hungarian matching of one hybrid training step);
- an eval-mode forward (300 queries, no gradients);
- multi-scale deformable attention alone at the encoder's size (every token a query), forward and
  backward.

``--impl both`` times the fast and the reference computation paths side by side in one process,
interleaved, on the same weights; ``--official`` adds the side-by-side run of the official code
(benchmarks/official.py). Results go to the screen and to ``--out`` as JSON, with the machine.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from hdetr.threads import add_threads_argument
from .report import write_report
from .timing import BASELINE_PRESET, FEATURE_STRIDES, HYBRID_PRESET, Timer, build, record, schedule_pairs, synthetic_inputs

TARGETS = {  # fast path, full size (docs/performance.md)
    "hybrid.train_step": ("<=", 16.0, "s"),
    "eval.forward": ("<=", 3.0, "s"),
    "hybrid_overhead": ("<=", 0.20, "fraction"),
}


def add_arguments(p) -> None:
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per measurement (default 3, --quick 1)")
    add_threads_argument(p, default=2)
    p.add_argument("--impl", choices=["fast", "reference", "both"], default="fast",
                   help="computation path (model.attention_impl); 'both' times them side by side")
    p.add_argument("--quick", action="store_true", help="smoke run: 384x512 image, 1 repeat, no warm-up")
    p.add_argument("--real-backbone", action="store_true", help="run a (randomly initialised) ResNet-50 on the image")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="image size (default 800 1066; --quick 384 512)")
    p.add_argument("--boxes", type=int, default=8, help="ground-truth boxes in the synthetic target (default 8)")
    p.add_argument("--only", nargs="+", default=None,
                   choices=["hybrid", "baseline", "matcher", "eval", "attention"], help="run only these measurements")
    p.add_argument("--profile", type=Path, default=None,
                   help="also profile one hybrid training step per impl (torch.profiler) and write the op tables here")
    p.add_argument("--official", type=Path, default=None, metavar="PATH",
                   help="also run the official code from this checkout of HDETR/H-Deformable-DETR, side by side "
                        "(same weights and inputs, interleaved); measures hybrid, baseline, eval")
    p.add_argument("--checkpoint-activations", nargs="+", default=None, choices=["encoder", "decoder", "backbone"],
                   help="activation checkpointing of these parts of hdetr's models (train.checkpoint_activations)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu); on CUDA the peak memory of each step is recorded")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16: forward and loss under CUDA bf16 autocast (the training steps; --device cuda only)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results file (default benchmarks/results/speed.json; with --official speed_official.json)")


# -- machine --------------------------------------------------------------------------------------
def machine_info() -> dict:
    from .machine import describe

    return describe()










def _autocast(args):
    """bf16 autocast on CUDA with --amp bf16 (forward and loss, as training does), else nothing."""
    import contextlib

    import torch

    if args.amp == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _reset_peak_memory(args) -> None:
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _record_peak_memory(results: dict, impl: str, name: str, args) -> None:
    """Peak CUDA memory allocated during the step (the CPU's peak is measured per process: bench memory)."""
    if args.device.startswith("cuda"):
        import torch

        entry = results.setdefault(impl, {}).setdefault(name, {"wall_s": [], "cpu_s": []})
        entry.setdefault("peak_memory_bytes", []).append(torch.cuda.max_memory_allocated())


def _schedule(impls, repeats: int, warmup: int):
    """(repeat index or None for warm-up, impl) pairs; impl order alternates between repeats."""
    return [(rep, impl) for rep, order in schedule_pairs(impls, repeats, warmup) for impl in order]


def measure_train(models: list[tuple[str, str]], impls, inputs, args, results: dict, checks: dict, warmup: int) -> None:
    """Training steps of every (preset, tag) model on every impl, interleaved: each repetition runs all
    (model, impl) pairs, in an order that alternates between repetitions, so that the hybrid/baseline
    and fast/reference ratios are measured side by side, under the same machine state."""
    import torch

    image, mask, features, targets = inputs
    built = {}
    for preset, tag in models:
        cfg, model, criterion, optimizer, plan = build(preset, impls[0], args.real_backbone, args.checkpoint_activations)
        model.to(args.device).train()
        built[tag] = (cfg, model, criterion, optimizer, plan, [p for p in model.parameters() if p.requires_grad])
    pairs = [(tag, impl) for tag in built for impl in impls]
    for rep, pair_order in schedule_pairs(pairs, args.repeats, warmup):
        for tag, impl in pair_order:
            cfg, model, criterion, optimizer, plan, params = built[tag]
            model.set_attention_impl(impl)
            optimizer.zero_grad(set_to_none=True)
            _reset_peak_memory(args)
            with Timer(args.sync) as t_fwd, _autocast(args):
                out = model(image, mask, features=features)
            with Timer(args.sync) as t_loss, _autocast(args):
                losses = criterion(out, targets, plan)
                total = criterion.total(losses)
            with Timer(args.sync) as t_bwd:
                total.backward()
            _record_peak_memory(results, impl, f"{tag}.train_step", args)
            if rep is None:
                # Warm-ups skip the optimizer step, so every impl's warm-up sees the same weights.
                checks.setdefault(f"{tag}.loss_total", {})[impl] = float(total.detach())
                continue
            with Timer(args.sync) as t_opt:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_max_norm)
                optimizer.step()
            step = Timer()
            step.wall = t_fwd.wall + t_loss.wall + t_bwd.wall
            step.cpu = t_fwd.cpu + t_loss.cpu + t_bwd.cpu
            for name, t in (("forward", t_fwd), ("loss", t_loss), ("backward", t_bwd), ("optimizer_step", t_opt),
                            ("train_step", step)):
                record(results, impl, f"{tag}.{name}", t)
            del out, losses, total




def measure_matcher(impls, inputs, args, results: dict, warmup: int) -> None:
    """All matcher calls of one hybrid training step, on fixed (detached) outputs."""
    import torch

    from hdetr.hybrid import layer_outputs
    from hdetr.losses import binary_targets, repeat_targets

    image, mask, features, targets = inputs
    cfg, model, criterion, _, plan = build(HYBRID_PRESET, impls[0], args.real_backbone)
    model.to(args.device).train()
    with torch.no_grad():
        out = model(image, mask, features=features)
    calls = [(o, repeat_targets(targets, k)) for o, k in zip(layer_outputs(out, "one2one"), plan.layer_repeats)]
    if "enc_outputs" in out:
        calls.append((out["enc_outputs"], binary_targets(targets)))
    calls += [(o, repeat_targets(targets, plan.branch_repeats)) for o in layer_outputs(out, "one2many")]
    for rep, impl in _schedule(impls, args.repeats, warmup):
        with Timer(args.sync) as t:
            for o, tg in calls:
                criterion.matcher(o, tg)
        if rep is not None:
            record(results, impl, "matcher.hybrid_step", t)


def measure_eval(impls, inputs, args, results: dict, checks: dict, warmup: int) -> None:
    import torch

    image, mask, features, _ = inputs
    _, model, _, _, _ = build(HYBRID_PRESET, impls[0], args.real_backbone)
    model.to(args.device).eval()
    outs = {}
    for rep, impl in _schedule(impls, args.repeats, warmup):
        model.set_attention_impl(impl)
        with torch.no_grad(), _autocast(args), Timer(args.sync) as t:
            out = model(image, mask, features=features)
        outs[impl] = out
        if rep is not None:
            record(results, impl, "eval.forward", t)
    if len(outs) == 2:
        a, b = outs.values()
        if "enc_outputs" in a:
            # Two-stage: the decoder queries are the top-k encoder proposals. Near-tied proposal scores
            # (17821 of them at full size) may swap places under float rounding, which changes which
            # proposal a query slot holds; compare the proposal scores, then the slots that agree.
            ea, eb = a["enc_outputs"]["pred_logits"], b["enc_outputs"]["pred_logits"]
            checks["eval.enc_logits_max_abs_diff"] = float((ea - eb).abs().max())
            k = a["pred_logits"].shape[1]
            same = torch.topk(ea[..., 0], k, dim=1)[1] == torch.topk(eb[..., 0], k, dim=1)[1]
            checks["eval.query_slots_with_same_proposal"] = f"{int(same.sum())}/{same.numel()}"
            diff = (a["pred_logits"] - b["pred_logits"]).abs().amax(-1)[same]
            checks["eval.pred_logits_max_abs_diff"] = float(diff.max()) if diff.numel() else None
        else:
            checks["eval.pred_logits_max_abs_diff"] = float((a["pred_logits"] - b["pred_logits"]).abs().max())


def measure_attention(impls, image_size, args, results: dict, checks: dict, warmup: int) -> None:
    """Deformable attention alone, as in an encoder layer: every token of the 4 levels is a query."""
    import torch

    from hdetr.models.deformable_attention import ms_deform_attn_fast, ms_deform_attn_reference

    fns = {"fast": ms_deform_attn_fast, "reference": ms_deform_attn_reference}
    h, w = image_size
    shapes = []
    for s in FEATURE_STRIDES:
        shapes.append((-(-h // s), -(-w // s)))
    shapes.append((-(-shapes[-1][0] // 2), -(-shapes[-1][1] // 2)))  # the extra stride-64 level
    heads, head_dim, levels, points = 8, 32, len(shapes), 4
    tokens = sum(a * b for a, b in shapes)
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, tokens, heads, head_dim, generator=g).requires_grad_()
    # Samples around each token's own position, a few pixels away, some off the map.
    refs = torch.cat([torch.stack(torch.meshgrid((torch.arange(a) + 0.5) / a, (torch.arange(b) + 0.5) / b,
                                                 indexing="ij")[::-1], -1).view(-1, 2) for a, b in shapes])
    offsets = torch.randn(1, tokens, heads, levels, points, 2, generator=g) * 0.02
    locations = (refs[None, :, None, None, None, :] + offsets).requires_grad_()
    weights = torch.randn(1, tokens, heads, levels * points, generator=g).softmax(-1)
    weights = weights.view(1, tokens, heads, levels, points).requires_grad_()
    grad_out = torch.randn(1, tokens, heads * head_dim, generator=g)
    outs = {}
    for rep, impl in _schedule(impls, args.repeats, warmup):
        for t in (value, locations, weights):
            t.grad = None
        with Timer() as t_fwd:
            out = fns[impl](value, shapes, locations, weights)
        with Timer() as t_bwd:
            out.backward(grad_out)
        outs[impl] = (out.detach(), value.grad.clone(), locations.grad.clone(), weights.grad.clone())
        if rep is not None:
            record(results, impl, "attention.forward", t_fwd)
            record(results, impl, "attention.backward", t_bwd)
    if len(outs) == 2:
        a, b = outs.values()
        for name, x, y in zip(("out", "grad_value", "grad_locations", "grad_weights"), a, b):
            checks[f"attention.{name}_max_abs_diff"] = float((x - y).abs().max())
    checks["attention.shape"] = {"queries": tokens, "heads": heads, "head_dim": head_dim, "levels": levels,
                                 "points": points, "spatial_shapes": shapes}


def profile_step(impl: str, inputs, args, out_dir: Path) -> Path:
    from torch.profiler import ProfilerActivity, profile, record_function

    image, mask, features, targets = inputs
    cfg, model, criterion, _, plan = build(HYBRID_PRESET, impl, args.real_backbone)
    model.train()

    def step():
        with record_function("## forward"):
            out = model(image, mask, features=features)
        with record_function("## loss"):
            total = criterion.total(criterion(out, targets, plan))
        with record_function("## backward"):
            total.backward()

    step()  # warm-up
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile_hybrid_step_{impl}.txt"
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60)
    shapes = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=50, max_shapes_column_width=90
    )
    path.write_text(f"hybrid training step (forward+loss+backward), impl={impl}\n\n{table}\n\nby input shape:\n{shapes}\n")
    return path


# -- report ---------------------------------------------------------------------------------------
ROWS = [
    ("hybrid.forward", "hybrid  forward"),
    ("hybrid.loss", "hybrid  loss (matching incl.)"),
    ("hybrid.backward", "hybrid  backward"),
    ("hybrid.optimizer_step", "hybrid  optimizer step"),
    ("hybrid.train_step", "hybrid  TRAIN STEP (fwd+loss+bwd)"),
    ("baseline.forward", "baseline forward"),
    ("baseline.loss", "baseline loss (matching incl.)"),
    ("baseline.backward", "baseline backward"),
    ("baseline.optimizer_step", "baseline optimizer step"),
    ("baseline.train_step", "baseline TRAIN STEP (fwd+loss+bwd)"),
    ("matcher.hybrid_step", "matcher, all calls of a hybrid step"),
    ("eval.forward", "EVAL FORWARD (300 queries)"),
    ("attention.forward", "deformable attn fwd (encoder size)"),
    ("attention.backward", "deformable attn bwd (encoder size)"),
]


def summarise(results: dict) -> dict:
    summary = {}
    for impl, entries in results.items():
        s = {name: {"median_s": statistics.median(e["wall_s"]), "median_cpu_s": statistics.median(e["cpu_s"]),
                    "wall_s": e["wall_s"], "cpu_s": e["cpu_s"]} for name, e in entries.items()}
        if "hybrid.train_step" in s and "baseline.train_step" in s:
            # Repetition i of both ran back to back (measure_train), so their ratio is a paired one.
            paired = [h / b - 1 for h, b in zip(s["hybrid.train_step"]["wall_s"], s["baseline.train_step"]["wall_s"])]
            s["hybrid_overhead"] = {"median": s["hybrid.train_step"]["median_s"] / s["baseline.train_step"]["median_s"] - 1,
                                    "paired": paired, "paired_median": statistics.median(paired)}
        summary[impl] = s
    return summary


def format_table(summary: dict, header: str) -> str:
    impls = list(summary)
    lines = [header, f"{'median seconds':40s}" + "".join(f"{i:>12s}" for i in impls)
             + ("   speed-up" if len(impls) == 2 else "")]
    for key, label in ROWS:
        if not any(key in summary[i] for i in impls):
            continue
        vals = [summary[i].get(key, {}).get("median_s") for i in impls]
        line = f"{label:40s}" + "".join(f"{v:12.3f}" if v is not None else f"{'-':>12s}" for v in vals)
        if len(impls) == 2 and None not in vals and impls == ["fast", "reference"]:
            line += f"   x{vals[1] / vals[0]:.2f}"
        lines.append(line)
    if any("hybrid_overhead" in summary[i] for i in impls):
        vals = [summary[i].get("hybrid_overhead", {}).get("median") for i in impls]
        lines.append(f"{'hybrid overhead over baseline':40s}"
                     + "".join(f"{v * 100:+11.1f}%" if v is not None else f"{'-':>12s}" for v in vals))
        vals = [summary[i].get("hybrid_overhead", {}).get("paired") for i in impls]
        lines.append(f"{'  per repetition (paired, back to back)':40s}" + "   ".join(
            " ".join(f"{v * 100:+.0f}%" for v in p) if p else "-" for p in vals))
    return "\n".join(lines)


def check_targets(summary: dict, quick: bool, real_backbone: bool, image_size) -> dict | None:
    if quick or real_backbone or tuple(image_size) != (800, 1066) or "fast" not in summary:
        return None  # the targets are for the full-size precomputed-feature setup
    out = {}
    for key, (op, limit, unit) in TARGETS.items():
        entry = summary["fast"].get(key)
        if entry is None:
            continue
        value = entry.get("median_s", entry.get("median"))
        out[key] = {"value": value, "limit": limit, "unit": unit, "met": value <= limit}
    return out


def run_speed(args) -> int:
    import torch

    from hdetr.errors import UserError

    if args.repeats is not None and args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    if args.boxes < 0:
        raise UserError(f"--boxes must be >= 0, got {args.boxes}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device here")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise UserError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.amp != "none" and not args.device.startswith("cuda"):
        raise UserError("--amp bf16 needs --device cuda")
    if args.official is not None and args.impl != "fast":
        raise UserError("--official compares the official code with hdetr's fast path; drop --impl")
    if args.official is not None and args.real_backbone:
        raise UserError("--official runs both on precomputed backbone features; drop --real-backbone")
    args.sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    args.out = args.out or Path("benchmarks/results/speed_official.json" if args.official else "benchmarks/results/speed.json")
    torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (1 if args.quick else 3)
    image_size = tuple(args.image_size or ((384, 512) if args.quick else (800, 1066)))
    warmup = 0 if args.quick else 1
    h, w = image_size
    sides = [(-(-h // st), -(-w // st)) for st in FEATURE_STRIDES]
    tokens = sum(a * b for a, b in sides) + (-(-sides[-1][0] // 2)) * (-(-sides[-1][1] // 2))
    if tokens < 1800:  # two-stage picks 300 + 1500 proposals among the encoder tokens
        raise UserError(f"--image-size {h} {w} gives {tokens} encoder tokens, fewer than the 1800 queries; use at least 288 352")
    impls = ["fast", "reference"] if args.impl == "both" else [args.impl]
    only = set(args.only or ["hybrid", "baseline", "matcher", "eval", "attention"])
    inputs = synthetic_inputs(image_size, args.boxes, args.real_backbone)
    if args.official is not None:
        return run_side_by_side(args, inputs, image_size, warmup)
    image, mask, features, targets = inputs
    inputs = (None if image is None else image.to(args.device), mask.to(args.device),
              None if features is None else [f.to(args.device) for f in features],
              [{k: v.to(args.device) for k, v in t.items()} for t in targets])

    machine = machine_info()
    setup = "ResNet-50 backbone on the image" if args.real_backbone else "precomputed backbone features"
    header = (f"hdetr bench speed: R50 H-DETR ({HYBRID_PRESET} / {BASELINE_PRESET}), {setup}, one "
              f"{image_size[0]}x{image_size[1]} image, {args.boxes} boxes, {args.threads} threads, "
              f"median of {args.repeats}\n{machine['cpu']}, {machine['usable_cores']} usable cores, torch {machine['torch']}")
    print(header, flush=True)
    results, checks = {impl: {} for impl in impls}, {}
    started = time.perf_counter()
    trained = [(preset, tag) for preset, tag in ((HYBRID_PRESET, "hybrid"), (BASELINE_PRESET, "baseline")) if tag in only]
    steps = [  # (the --only names it covers, what it measures, how)
        ({"hybrid", "baseline"}, "training steps (" + " and ".join(t for _, t in trained) + ", interleaved)",
         lambda: measure_train(trained, impls, inputs, args, results, checks, warmup)),
        ({"matcher"}, "matcher", lambda: measure_matcher(impls, inputs, args, results, warmup)),
        ({"eval"}, "eval", lambda: measure_eval(impls, inputs, args, results, checks, warmup)),
        ({"attention"}, "attention", lambda: measure_attention(impls, image_size, args, results, checks, warmup)),
    ]
    for names, what, fn in steps:
        if names & only:
            print(f"  measuring {what} ...", flush=True)
            fn()
    profiles = []
    if args.profile:
        for impl in impls:
            print(f"  profiling a hybrid training step ({impl}) ...", flush=True)
            profiles.append(str(profile_step(impl, inputs, args, args.profile)))

    summary = summarise(results)
    print()
    print(format_table(summary, header))
    targets = check_targets(summary, args.quick, args.real_backbone, image_size)
    if targets:
        print("targets (fast path): " + ", ".join(
            f"{k} {v['value']:.3g} <= {v['limit']:g}: {'met' if v['met'] else 'NOT met'}" for k, v in targets.items()))
    for key, value in checks.items():
        if "diff" in key or key.endswith("loss_total"):
            print(f"check {key}: {value}")
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "benchmark": "speed",
        "machine": machine,
        "settings": {
            "presets": {"hybrid": HYBRID_PRESET, "baseline": BASELINE_PRESET},
            "backbone": "resnet50 (random init)" if args.real_backbone else "precomputed features",
            "image_size": list(image_size), "boxes": args.boxes, "threads": args.threads, "repeats": args.repeats,
            "warmup": warmup, "impls": impls, "quick": args.quick, "device": args.device, "amp": args.amp,
            "checkpoint_activations": args.checkpoint_activations,
            "train_step": "forward + loss (matching included) + backward; optimizer_step (clip + AdamW) reported apart",
        },
        "results": summary,
        "checks": checks,
        "targets": targets,
        "profiles": profiles,
        "elapsed_s": time.perf_counter() - started,
    }
    write_report(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


run = run_speed


def run_side_by_side(args, inputs, image_size, warmup: int) -> int:
    """--official PATH: the official code against hdetr's fast path (benchmarks.side_by_side)."""
    from hdetr.errors import UserError
    from .official import OfficialCodeError
    from .side_by_side import measure_side_by_side, ratios

    machine = machine_info()
    header = (f"hdetr bench speed --official: R50 H-DETR ({HYBRID_PRESET} / {BASELINE_PRESET}) against the official "
              f"code, precomputed backbone features, one {image_size[0]}x{image_size[1]} image, {args.boxes} boxes, "
              f"{args.threads} threads, {args.device}, median of {args.repeats}\n{machine['cpu']}, "
              f"{machine['usable_cores']} usable cores, torch {machine['torch']}, load {machine['load_average_at_start']}")
    print(header, flush=True)
    results, checks = {"official": {}, "fast": {}}, {}
    started = time.perf_counter()
    try:
        official = measure_side_by_side(args, inputs, image_size, results, checks, warmup, args.sync)
    except OfficialCodeError as e:
        raise UserError(str(e)) from None
    summary = summarise(results)
    rat = ratios(summary)
    print()
    print(f"official code: {official['path']} ({official['attention']}; stubbed: {', '.join(official['stubbed_modules']) or 'none'})")
    print(f"{'median seconds (wall / CPU)':36s}{'official':>18s}{'hdetr fast':>18s}{'ratio':>14s}")
    for key in ("hybrid.train_step", "baseline.train_step", "eval.forward"):
        if key in rat:
            o, f = summary["official"][key], summary["fast"][key]
            print(f"{key:36s}{o['median_s']:8.2f} / {o['median_cpu_s']:6.2f}  {f['median_s']:8.2f} / {f['median_cpu_s']:6.2f}"
                  f"   x{rat[key]['wall']:.2f} / x{rat[key]['cpu']:.2f}")
    for key, value in checks.items():
        print(f"check {key}: {value}")
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "benchmark": "speed_official",
        "machine": machine,
        "official": official,
        "settings": {
            "presets": {"hybrid": HYBRID_PRESET, "baseline": BASELINE_PRESET}, "backbone": "precomputed features",
            "image_size": list(image_size), "boxes": args.boxes, "threads": args.threads, "repeats": args.repeats,
            "warmup": warmup, "device": args.device, "checkpoint_activations": args.checkpoint_activations,
            "train_step": "forward + loss (matching included) + backward",
        },
        "results": summary,
        "ratios_hdetr_over_official": rat,
        "checks": checks,
        "elapsed_s": time.perf_counter() - started,
    }
    write_report(args.out, report)
    print(f"\nwrote {args.out}")
    return 0
