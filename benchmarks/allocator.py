"""The memory allocator's share of hdetr's CPU time: eval forward, training step and predict, each in
fresh processes, under several allocator policies, interleaved.

    python benchmarks/allocator.py [--workloads eval train predict] [--policies default glibc_no_mmap ...]
                                   [--rounds 3] [--threads 2] [--out benchmarks/results/allocator.json]

Policies (each process gets one, set before any tensor exists):
  default             glibc malloc as it comes: blocks over the mmap threshold (dynamic, up to 32 MiB) are
                      fresh mmaps, returned to the kernel on free, and fault in again page by page
  glibc_thresholds    mallopt at start: M_MMAP_THRESHOLD 32 MiB (glibc's maximum), M_TRIM_THRESHOLD 1 GiB
  glibc_no_mmap       mallopt at start: M_MMAP_MAX 0 (large blocks come from the heap and are reused),
                      M_TRIM_THRESHOLD 1 GiB (freed heap tops are kept)
  jemalloc, tcmalloc  LD_PRELOAD of libjemalloc.so.2 / libtcmalloc_minimal.so.4 (apt packages
                      libjemalloc2, libtcmalloc-minimal4); skipped with a note where not installed

Workloads (full-size R50 H-DETR, r50_hybrid_branch_12ep, seeded random weights):
  eval      eval forward, precomputed stride-8/16/32 features of one 800x1066 image (as hdetr bench speed)
  train     training step (forward, loss with matching, backward, clip, AdamW), precomputed features of
            one 384x512 image (full size would take minutes per process on 2 cores)
  predict   hdetr.api.Detector.predict on 480x640 JPEGs (ResNet-50 on the image, resized to 800 short side)

Per process: one warm-up, then --iterations timed repetitions; the process's CPU time, wall time, minor
page faults and peak RSS over the timed part (getrusage). Rounds interleave the policies (the order
rotates), so every policy sees the same machine state on average.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

THIS_FILE = Path(__file__).resolve()
REPO = THIS_FILE.parent.parent
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
PRELOADS = {"jemalloc": LIBDIR / "libjemalloc.so.2", "tcmalloc": LIBDIR / "libtcmalloc_minimal.so.4"}
POLICIES = ("default", "glibc_thresholds", "glibc_no_mmap", "jemalloc", "tcmalloc")
WORKLOADS = ("eval", "train", "predict")
PRESET = "r50_hybrid_branch_12ep"
FEATURES = {"channels": (512, 1024, 2048), "strides": (8, 16, 32)}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)


def set_glibc_policy(policy: str) -> None:
    libc = ctypes.CDLL("libc.so.6")
    settings = {"glibc_thresholds": [(M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30)],
                "glibc_no_mmap": [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30)]}[policy]
    for param, value in settings:
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"mallopt({param}, {value}) refused")


def features_of(h: int, w: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, -(-h // s), -(-w // s), generator=g) for c, s in zip(FEATURES["channels"], FEATURES["strides"])]


def precomputed_model(train: bool):
    import torch

    from hdetr.config import load_config
    from hdetr.models import build_model

    cfg = load_config(PRESET, ["model.backbone=precomputed", f"model.backbone_channels={list(FEATURES['channels'])}"])
    torch.manual_seed(0)
    return cfg, build_model(cfg).train(train)


def workload_eval(iterations: int):
    import torch

    _, model = precomputed_model(train=False)
    feats, mask = features_of(800, 1066), torch.zeros(1, 800, 1066, dtype=torch.bool)

    def once():
        with torch.no_grad():
            model(None, mask, features=feats)
    return once


def workload_train(iterations: int):
    import torch

    from hdetr.engine.optim import param_groups
    from hdetr.hybrid import matching_plan
    from hdetr.losses import SetCriterion

    cfg, model = precomputed_model(train=True)
    criterion = SetCriterion(cfg.model.num_classes, cfg.loss)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    plan = matching_plan(cfg, epoch=0)
    feats, mask = features_of(384, 512), torch.zeros(1, 384, 512, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    targets = [{"labels": torch.randint(0, 91, (8,), generator=g),
                "boxes": torch.cat([torch.rand(8, 2, generator=g) * 0.6 + 0.2, torch.rand(8, 2, generator=g) * 0.3 + 0.05], 1)}]

    def once():
        optimizer.zero_grad(set_to_none=True)
        total = criterion.total(criterion(model(None, mask, features=feats), targets, plan))
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_max_norm)
        optimizer.step()
    return once


def workload_predict(iterations: int, work: Path):
    from hdetr.api import Detector

    files = sorted((work / "images").glob("*.jpg"))
    detector = Detector.from_checkpoint(work / "model")
    state = {"i": 0}

    def once():
        detector.predict(files[state["i"] % len(files)])
        state["i"] += 1
    return once


def prepare_predict(work: Path) -> None:
    """A model folder (seeded random weights) and a few JPEGs, written once, before any timing."""
    import numpy as np
    import torch
    from PIL import Image

    from hdetr.weights import save_model
    from hdetr.config import load_config
    from hdetr.models import build_model

    if not (work / "model" / "config.yaml").is_file():
        cfg = load_config(PRESET)
        torch.manual_seed(0)
        save_model(work / "model", cfg, build_model(cfg).state_dict())
    images = work / "images"
    if not images.is_dir():
        images.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(images / f"img_{i}.jpg")


def child(args) -> int:
    if args.policy.startswith("glibc_"):
        set_glibc_policy(args.policy)  # before torch allocates anything
    import torch

    torch.set_num_threads(args.threads)
    build = {"eval": workload_eval, "train": workload_train,
             "predict": lambda n: workload_predict(n, Path(args.work))}[args.workload]
    once = build(args.iterations)
    once()  # warm-up
    times = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = time.process_time()
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - c0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": times, "cpu_s_per_iteration": cpu / args.iterations,
                      "minor_faults_per_iteration": (r1.ru_minflt - r0.ru_minflt) / args.iterations,
                      "peak_rss_mib": r1.ru_maxrss / 1024}))
    return 0


def policy_env(policy: str) -> dict | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    if policy in PRELOADS:
        if not PRELOADS[policy].is_file():
            return None
        env["LD_PRELOAD"] = str(PRELOADS[policy])
    return env


def measure_round(args, workload: str, r: int, policies: list[str]) -> list[dict]:
    """One fresh process per policy; the order rotates from round to round."""
    runs = []
    order = policies[r % len(policies):] + policies[:r % len(policies)]
    for policy in order:
        cmd = [sys.executable, str(THIS_FILE), "--child", workload, "--policy", policy, "--threads", str(args.threads),
               "--iterations", str(args.iterations), "--work", str(args.work)]
        load = os.getloadavg()[0]
        out = subprocess.run(cmd, env=policy_env(policy), capture_output=True, text=True, check=True).stdout
        run = {"workload": workload, "policy": policy, "round": r, "load_average": load,
               **json.loads(out.strip().splitlines()[-1])}
        runs.append(run)
        print(f"{workload:8s} {policy:17s} round {r}: {statistics.median(run['wall_s']):6.2f} s wall, "
              f"{run['cpu_s_per_iteration']:6.2f} CPU-s, {run['minor_faults_per_iteration']:9.0f} faults, "
              f"peak RSS {run['peak_rss_mib']:6.0f} MiB (load {load:.1f})", flush=True)
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=3, help="timed repetitions per process (after one warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pause-script", default=None, metavar="PATH",
                   help="run 'PATH stop' before and 'PATH cont' after every round (e.g. pausing background jobs for a "
                        "quiet window); cont runs even when the round fails")
    p.add_argument("--work", type=Path, default=Path("/tmp/hdetr_allocator_bench"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "allocator.json")
    p.add_argument("--child", dest="workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    p.add_argument("--policy", default="default", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workload:
        return child(args)
    if "predict" in args.workloads:
        prepare_predict(args.work)
    skipped = {pol: f"{PRELOADS[pol]} not installed" for pol in args.policies if policy_env(pol) is None}
    policies = [pol for pol in args.policies if pol not in skipped]
    runs = []
    print(f"allocator benchmark: {args.workloads}, policies {policies}, {args.rounds} rounds, {args.threads} threads, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    for workload in args.workloads:
        for r in range(args.rounds):
            if args.pause_script:
                subprocess.run([args.pause_script, "stop"], check=True)
            try:
                runs += measure_round(args, workload, r, policies)
            finally:
                if args.pause_script:
                    subprocess.run([args.pause_script, "cont"], check=True)
    summary = {}
    for workload in args.workloads:
        base = None
        for policy in policies:
            rs = [x for x in runs if x["workload"] == workload and x["policy"] == policy]
            s = {"median_wall_s": statistics.median(statistics.median(x["wall_s"]) for x in rs),
                 "median_cpu_s": statistics.median(x["cpu_s_per_iteration"] for x in rs),
                 "median_minor_faults": statistics.median(x["minor_faults_per_iteration"] for x in rs),
                 "median_peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in rs)}
            base = base or s
            s["cpu_vs_default"] = s["median_cpu_s"] / base["median_cpu_s"]
            s["wall_vs_default"] = s["median_wall_s"] / base["median_wall_s"]
            summary[f"{workload}/{policy}"] = s
    print(f"\n{'workload/policy':28s}{'wall s':>8s}{'CPU s':>8s}{'x CPU':>7s}{'x wall':>7s}{'faults':>10s}{'RSS MiB':>9s}")
    for key, s in summary.items():
        print(f"{key:28s}{s['median_wall_s']:8.2f}{s['median_cpu_s']:8.2f}{s['cpu_vs_default']:7.2f}{s['wall_vs_default']:7.2f}"
              f"{s['median_minor_faults']:10.0f}{s['median_peak_rss_mib']:9.0f}")
    import platform

    import torch

    report = {"benchmark": "allocator", "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                                                    "python": platform.python_version(), "glibc": platform.libc_ver()[1]},
              "settings": {"threads": args.threads, "rounds": args.rounds, "iterations": args.iterations,
                           "workloads": args.workloads, "preset": PRESET},
              "skipped_policies": skipped, "summary": summary, "runs": runs,
              "command": "python benchmarks/allocator.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
