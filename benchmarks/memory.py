"""Peak memory of the full-size hybrid training step, one fresh process per configuration.

Configurations: ``plain`` (hdetr, fast path), ``checkpointed`` (hdetr with activation checkpointing of
the encoder and decoder layers, ``train.checkpoint_activations``) and, with ``--official PATH``,
``official`` (the official code, as in ``bench speed --official``). Each child process builds the model
on precomputed backbone features of one image, runs ``--steps`` training steps (forward, loss,
backward, AdamW step) and reports its peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``:
torch's CPU allocations are invisible to tracemalloc), the peak before the first step (model,
inputs, interpreter), and the time and CPU time of each step. On CUDA the peak of
``torch.cuda.max_memory_allocated`` is reported as well.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from hdetr.threads import add_threads_argument

CONFIGS = ("plain", "checkpointed", "official")
CHECKPOINTED_PARTS = ["encoder", "decoder"]


def add_arguments(p) -> None:
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=None,
                   help="configurations to measure (default: plain checkpointed, and official with --official)")
    p.add_argument("--official", type=Path, default=None, metavar="PATH", help="checkout of HDETR/H-Deformable-DETR")
    p.add_argument("--steps", type=int, default=2, help="training steps per process (default 2)")
    p.add_argument("--rounds", type=int, default=1, help="processes per configuration, run round-robin (default 1)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=[800, 1066])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    add_threads_argument(p, default=2)
    p.add_argument("--env", nargs="+", default=[], metavar="KEY=VALUE",
                   help="environment of the measured processes, e.g. OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                   help="measure every configuration once per environment variant, e.g. "
                        "default: passive:OMP_WAIT_POLICY=PASSIVE (round-robin, one process each)")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="run N busy-loop processes while measuring (a competing CPU load)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.json"), help="JSON results file")


def _maxrss_bytes() -> int:
    # Linux reports kilobytes, macOS bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _pairs(items, what: str) -> dict:
    from hdetr.errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _variants(specs) -> list[tuple[str, dict]]:
    """``["default", "passive:OMP_WAIT_POLICY=PASSIVE"]`` -> [(name, extra environment)]."""
    if not specs:
        return [("default", {})]
    return [(name, _pairs([p for p in rest.split(",") if p], f"--variants {name}"))
            for name, _, rest in (s.partition(":") for s in specs)]


def child(config: str, steps: int, image_size, device: str, threads: int, official: str | None) -> dict:
    """One configuration in this (fresh) process."""
    import torch

    from .timing import HYBRID_PRESET, Timer, build, synthetic_inputs

    torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else None
    _, mask, features, targets = synthetic_inputs(tuple(image_size), 8, False)
    mask, features = mask.to(device), [f.to(device) for f in features]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    if config == "official":
        from .official import build_official, load_official, official_train_losses

        code = load_official(official, device)
        net, crit, oargs = build_official(code, "hybrid", features, device)
        samples = code.nested_tensor(torch.zeros(1, 3, *image_size, device=device), mask)
        params = [p for p in net.parameters() if p.requires_grad]

        def loss():
            return official_train_losses(code, net, crit, oargs, samples, [dict(t) for t in targets])[1]
        net.train()
    else:
        parts = CHECKPOINTED_PARTS if config == "checkpointed" else None
        cfg, model, criterion, _, plan = build(HYBRID_PRESET, "fast", False, parts)
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]

        def loss():
            return criterion.total(criterion(model(None, mask, features=features), targets, plan))
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-4)
    before = _maxrss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with Timer(sync) as t:
            total = loss()
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.1)
            optimizer.step()
        times.append({"wall_s": t.wall, "cpu_s": t.cpu})
        del total
    out = {"config": config, "peak_rss_bytes": _maxrss_bytes(), "peak_rss_before_first_step_bytes": before,
           "steps": times, "trainable_parameters": sum(p.numel() for p in params)}
    if cuda:
        out["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _report(args, configs, variants, runs, load_start):
    from .machine import cpu_model, usable_cpus

    by_config = {}
    for c in configs:
        mine = [r for r in runs if r["config"] == c]
        if not mine:
            continue
        by_config[c] = {"peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in mine),
                        "peak_rss_bytes_min": min(r["peak_rss_bytes"] for r in mine)}
    steps = {}  # the last step of each process: past the first-step allocations
    for r in runs:
        e = steps.setdefault(f"{r['config']}/{r['variant']}", {"last_step_wall_s": [], "last_step_cpu_s": []})
        e["last_step_wall_s"].append(r["steps"][-1]["wall_s"])
        e["last_step_cpu_s"].append(r["steps"][-1]["cpu_s"])
    for e in steps.values():
        e["median_cpu_s"] = statistics.median(e["last_step_cpu_s"])
        e["median_wall_s"] = statistics.median(e["last_step_wall_s"])
    ratios = {}
    for name, _ in variants:
        o, h = steps.get(f"official/{name}"), steps.get(f"plain/{name}")
        if o and h:
            ratios[f"cpu_official_over_plain/{name}"] = o["median_cpu_s"] / h["median_cpu_s"]
    if "plain" in by_config and "checkpointed" in by_config:
        ratios["checkpointed_over_plain"] = by_config["checkpointed"]["peak_rss_bytes_max"] / by_config["plain"]["peak_rss_bytes_max"]
    if "official" in by_config:
        for c in ("plain", "checkpointed"):
            if c in by_config:
                ratios[f"{c}_over_official"] = by_config[c]["peak_rss_bytes_max"] / by_config["official"]["peak_rss_bytes_max"]
    report = {"benchmark": "memory", "machine": {"cpu": cpu_model(), "usable_cores": usable_cpus(),
                                                 "load_average_at_start": load_start,
                                                 "load_average_at_end": list(os.getloadavg())},
              "settings": {"configs": configs, "variants": {n: e for n, e in variants}, "env": args.env,
                           "busy_loops": args.busy, "steps": args.steps, "rounds": args.rounds, "image_size": args.image_size,
                           "device": args.device, "threads": args.threads, "checkpointed_parts": CHECKPOINTED_PARTS,
                           "official": str(args.official) if args.official else None,
                           "step": "forward + loss + backward + clip + AdamW, hybrid branch model, precomputed features"},
              "runs": runs, "summary": by_config, "steps": steps, "ratios": ratios}
    return report, ratios


def run(args) -> int:
    from hdetr.errors import UserError

    configs = args.configs or (["plain", "checkpointed"] + (["official"] if args.official else []))
    if "official" in configs and args.official is None:
        raise UserError("configuration 'official' needs --official PATH")
    if args.steps < 1 or args.rounds < 1:
        raise UserError("--steps and --rounds must be >= 1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.update(_pairs(args.env, "--env"))
    variants = _variants(args.variants)
    runs = []
    load_start = list(os.getloadavg())
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        for r in range(args.rounds):
            for config, (variant, extra) in [(c, v) for c in configs for v in variants][:: 1 if r % 2 == 0 else -1]:
                print(f"  {config} {variant} (round {r + 1}) ...", flush=True)
                spec = json.dumps({"config": config, "steps": args.steps, "image_size": args.image_size,
                                   "device": args.device, "threads": args.threads,
                                   "official": str(args.official) if args.official else None})
                done = subprocess.run([sys.executable, "-m", "benchmarks.memory", spec], capture_output=True,
                                      text=True, env={**env, **extra})
                if done.returncode != 0:
                    raise UserError(f"the {config} process failed:\n{done.stderr.strip()[-2000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result.update(variant=variant, env=extra, load_average_after=list(os.getloadavg()))
                runs.append(result)
                # Written after every process: a run stopped half-way keeps what it measured.
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(_report(args, configs, variants, runs, load_start)[0], indent=1) + "\n")
                gib = 2 ** 30
                print(f"    peak RSS {result['peak_rss_bytes'] / gib:.2f} GiB (before the first step "
                      f"{result['peak_rss_before_first_step_bytes'] / gib:.2f} GiB); step "
                      + ", ".join(f"{s['wall_s']:.1f} s / {s['cpu_s']:.1f} CPU-s" for s in result["steps"]), flush=True)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    report, ratios = _report(args, configs, variants, runs, load_start)
    for k, v in ratios.items():
        print(f"{k}: x{v:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(child(spec["config"], spec["steps"], spec["image_size"], spec["device"], spec["threads"],
                           spec["official"])))
