"""Your data, side by side: hdetr's one-to-one baseline, its hybrid schemes and a classic dense
detector (torchvision FCOS), each trained within the same CPU-time budget and scored by the same
COCO evaluator on the same validation split.

    python -m benchmarks.compare TRAIN [--val VAL] --budget 15m --seeds N --out DIR
        [--arms baseline,branch,epoch,layer,fcos] [--preset small_data] [--no-recipe] [--threads 1] [--jobs 1]

TRAIN and VAL are read as ``data.train`` / ``data.val`` read them (any layout hdetr reads; a dataset
with its own validation split needs no --val). The hdetr arms train the ``small_data`` preset with the
settings the data chose (hdetr.data.recipe; --no-recipe keeps the preset's) and
``train.time_budget=BUDGET train.budget_clock=cpu``: the budget counts the CPU seconds of the
training process, evaluations included, so arms run one after another on a shared machine get the
same amount of computation, and so do runs trained side by side (``--jobs N``: N runs at a time, each in
its own process, 1 thread each by default; ``wall_seconds`` in compare.json says what it took). The FCOS arm (benchmarks/fcos.py) takes the same dataset objects, backbone
weights, batch size and budget.

DIR gets one folder per run (``runs/ARM_sSEED``, each with its ``result.json`` once finished: a
finished run is skipped when the command is run again, an hdetr run that was interrupted resumes from
its last.pt, an FCOS run starts over), ``compare.json`` (per arm: AP and AP50 at the end of the
budget, mean and std over seeds, the best evaluation, the curves of AP/AP50 against CPU seconds),
``compare.png`` (the curves) and ``compare.md`` (the verdict table, also printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from hdetr.config import ConfigError, load_config, parse_duration
from hdetr.data.layouts import resolve_source
from hdetr.data.recipe import PRESET, choose, overrides, split_images
from hdetr.engine.loaders import load_split, val_spec
from hdetr.engine.progress import hms
from hdetr.engine.runlog import read_records
from hdetr.errors import UserError
from hdetr.files import atomic_write

HDETR_ARMS = {"baseline": "none", "branch": "branch", "epoch": "epoch", "layer": "layer"}
# What each arm is, in the tables (hybrid.scheme=none is hdetr's one-to-one baseline).
DETECTORS = {"baseline": "hdetr one-to-one", "branch": "hdetr hybrid branch", "epoch": "hdetr hybrid epoch",
             "layer": "hdetr hybrid layer", "fcos": "torchvision FCOS, EfficientNet-Lite0 + FPN"}
CLASSIC_ARMS = ("fcos",)
ARMS = (*HDETR_ARMS, *CLASSIC_ARMS)
DEFAULT_ARMS = "baseline,branch,fcos"
RESULT = "result.json"
# Equal CPU time: the verdict compares the best evaluation each arm reached by these shares of the budget.
AT_SHARES = (0.25, 0.5, 1.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("train", help="the training set, as data.train takes it")
    p.add_argument("--val", default="", help="the validation set (default: the training set's own val split)")
    p.add_argument("--budget", default="15m", help="CPU time per arm and seed: 90s, 15m, 1.5h (default 15m)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per arm (default 1)")
    p.add_argument("--out", required=True, type=Path, help="output folder (runs/, compare.json, .png, .md)")
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, from {','.join(ARMS)} "
                                                        f"(default {DEFAULT_ARMS})")
    p.add_argument("--preset", default=PRESET, help=f"the hdetr arms' preset (default {PRESET})")
    p.add_argument("--no-recipe", action="store_true", help="keep the preset's settings instead of the data's")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every arm (after the data's choices), e.g. train.batch_size=2")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine, more threads spend CPU time waiting)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in its own process (default 1; the budget is each run's own "
                        "CPU time, so runs side by side get the same computation as runs in turn)")


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise UserError(f"--arms: unknown arm {bad[0]!r}; choose from {', '.join(ARMS)}" if bad else
                        f"--arms: name at least one of {', '.join(ARMS)}")
    return list(dict.fromkeys(arms))


def check_args(args) -> tuple[float, list[str]]:
    """Every argument checked before anything trains: one-line errors."""
    try:
        budget = parse_duration(args.budget, "--budget")
    except ConfigError as e:
        raise UserError(str(e)) from None
    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    arms = parse_arms(args.arms)
    resolve_source(args.train, "train")  # a UserError naming the path and the layouts tried
    if args.val:
        resolve_source(args.val, "val")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a folder")
    return budget, arms


def base_config(args, budget: float) -> tuple[object, list[dict]]:
    """The config every arm shares, and the data's choices (key, value, why) it was made with."""
    common = [f"data.train={args.train}", *([f"data.val={args.val}"] if args.val else [])]
    chosen: list = []
    if not args.no_recipe:
        cfg0 = load_config(args.preset, common)
        vspec = val_spec(cfg0)
        val_images = split_images(vspec, "val") if vspec else 0
        _, chosen = choose(args.train, cfg0.train.batch_size, val_images)
    cfg = load_config(args.preset, [*common, *overrides(chosen), *args.set, f"train.time_budget={args.budget}",
                                    "train.budget_clock=cpu", "train.num_workers=0"])
    if val_spec(cfg) is None:
        raise UserError(f"{args.train} has no validation split of its own: give one with --val")
    return cfg, [{"key": c.key, "value": c.value, "why": c.why} for c in chosen]


def describe_machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# -- one run ----------------------------------------------------------------------------------------------
def run_hdetr(cfg, arm: str, seed: int, folder: Path, log) -> dict:
    from dataclasses import replace

    from hdetr.engine.checkpoints import LAST
    from hdetr.engine.train import train

    cfg = replace(cfg, hybrid=replace(cfg.hybrid, scheme=HDETR_ARMS[arm]), train=replace(cfg.train, seed=seed))
    resume = (folder / LAST).exists()
    if resume:
        log(f"{arm} seed {seed}: resuming {folder / LAST}")
    wall = time.perf_counter()
    result = train(cfg, folder, resume=resume, device="cpu", progress=False)
    curve = [{"cpu_s": r["budget_time"], "AP": r["eval"]["AP"], "AP50": r["eval"]["AP50"], "epoch": r["epoch"] + 1,
              "step": r["step"]} for r in read_records(folder / "metrics.jsonl") if "eval" in r and "budget_time" in r]
    return {"arm": arm, "seed": seed, "detector": DETECTORS[arm], "curve": curve,
            "cpu_seconds": result.budget["elapsed"], "wall_seconds_last_session": round(time.perf_counter() - wall, 1),
            "steps": result.steps, "epochs": result.budget["epochs"], "lr_drop": result.budget["lr_drop"]}


def run_fcos(cfg, seed: int, log) -> dict:
    from .fcos import train_fcos

    train_split = load_split(cfg.data.train, "train", cfg, train=True)
    val_split = load_split(val_spec(cfg), "val", cfg, train=False, category_map=train_split.dataset.category_map)
    res = train_fcos(cfg, train_split, val_split, parse_duration(cfg.train.time_budget), seed, log=log)
    return {"arm": "fcos", "seed": seed, "detector": DETECTORS["fcos"],
            "curve": res.curve, "cpu_seconds": round(res.cpu_seconds, 2),
            "wall_seconds_last_session": round(res.wall_seconds, 1), "steps": res.steps, "epochs": res.epochs}


def finish_run(run: dict) -> dict:
    """AP/AP50 at the end of the budget (the last evaluation) and the best evaluation."""
    curve = run["curve"]
    if not curve:
        raise UserError(f"{run['arm']} seed {run['seed']}: the run was never evaluated")
    best = max(curve, key=lambda c: c["AP50"])
    return {**run, "AP": curve[-1]["AP"], "AP50": curve[-1]["AP50"], "best_AP50": best["AP50"],
            "best_AP50_at_cpu_s": best["cpu_s"]}


# -- the summary --------------------------------------------------------------------------------------------
def best_until(curve: list[dict], seconds: float, key: str) -> float | None:
    """The best ``key`` among the evaluations done by ``seconds`` (what a run stopped there would keep)."""
    values = [c[key] for c in curve if c["cpu_s"] <= seconds]
    return max(values) if values else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict], budget: float) -> dict:
    arms: dict[str, dict] = {}
    for r in runs:
        r = {**r, "detector": DETECTORS.get(r["arm"], r["detector"])}  # runs finished before a label changed
        arms.setdefault(r["arm"], {"detector": r["detector"], "runs": []})["runs"].append(r)
    for a in arms.values():
        for key in ("AP", "AP50", "best_AP50"):
            a[key], a[f"{key}_std"] = _mean_std([r[key] for r in a["runs"]])
        for share in AT_SHARES:
            vals = [best_until(r["curve"], share * budget * 1.1 if share == 1.0 else share * budget, "AP50")
                    for r in a["runs"]]
            a[f"AP50_by_{int(share * 100)}pct"] = statistics.fmean(vals) if None not in vals else None
    return arms


def verdict_rows(arms: dict) -> list[dict]:
    rows = []
    hybrid = [a for a in ("branch", "epoch", "layer") if a in arms]
    if "baseline" in arms:
        for h in hybrid:
            rows.append(_row(f"hybrid {h} vs one-to-one baseline", h, "baseline", arms))
    hd = [a for a in HDETR_ARMS if a in arms]
    if hd:
        best = max(hd, key=lambda a: arms[a]["AP50"])
        for c in CLASSIC_ARMS:
            if c in arms:
                rows.append(_row(f"hdetr's best ({best}) vs {c}", best, c, arms))
    return rows


def _row(name: str, a: str, b: str, arms: dict) -> dict:
    da, db = arms[a], arms[b]
    diff = da["AP50"] - db["AP50"]
    noise = math.hypot(da["AP50_std"], db["AP50_std"])
    word = "win" if diff > noise else "loss" if diff < -noise else "tie"
    if noise == 0.0:
        word += " (1 seed: no spread known)"
    return {"comparison": name, "a": a, "b": b, "AP50_a": da["AP50"], "AP50_b": db["AP50"], "AP_a": da["AP"],
            "AP_b": db["AP"], "AP50_difference": diff, "verdict": word}


def table(arms: dict, rows: list[dict], budget: float, seeds: int) -> str:
    pm = (lambda m, s: f"{m:.3f} ± {s:.3f}") if seeds > 1 else (lambda m, s: f"{m:.3f}")
    shares = " | ".join(f"AP50 by {int(s * 100)} %" for s in AT_SHARES)
    lines = [f"| arm | detector | AP | AP50 | best AP50 | {shares} | CPU s |",
             "|---|---|---|---|---|" + "---|" * len(AT_SHARES) + "---|"]
    for name, a in arms.items():
        at = " | ".join("-" if a[f"AP50_by_{int(s * 100)}pct"] is None else f"{a[f'AP50_by_{int(s * 100)}pct']:.3f}"
                        for s in AT_SHARES)
        cpu = statistics.fmean(r["cpu_seconds"] for r in a["runs"])
        lines.append(f"| {name} | {a['detector']} | {pm(a['AP'], a['AP_std'])} | {pm(a['AP50'], a['AP50_std'])} | "
                     f"{pm(a['best_AP50'], a['best_AP50_std'])} | {at} | {cpu:.0f} |")
    lines += ["", f"Verdicts at equal CPU time ({budget:.0f} CPU s per arm and seed; AP/AP50 at the end of the budget):",
              "", "| comparison | AP50 | AP | verdict |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['comparison']} | {r['AP50_a']:.3f} vs {r['AP50_b']:.3f} ({r['AP50_difference']:+.3f}) | "
                     f"{r['AP_a']:.3f} vs {r['AP_b']:.3f} | {r['verdict']} |")
    return "\n".join(lines)


def plot(arms: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, a) in enumerate(arms.items()):
        colour = f"C{i}"
        for j, r in enumerate(a["runs"]):
            xs = [c["cpu_s"] for c in r["curve"]]
            for ax, key in zip(axes, ("AP", "AP50")):
                ax.plot(xs, [c[key] for c in r["curve"]], "-o", ms=3, color=colour, alpha=1.0 if j == 0 else 0.4,
                        label=name if j == 0 else None)
    for ax, key in zip(axes, ("AP", "AP50")):
        ax.set_xlabel("CPU seconds (training + evaluation)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=1)))


# -- the command ---------------------------------------------------------------------------------------------
def run(args) -> int:
    import torch

    budget, arms = check_args(args)
    torch.set_num_threads(args.threads)
    cfg, chosen = base_config(args, budget)
    vspec = val_spec(cfg)
    val_images = split_images(vspec, "val")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"bench compare: {len(arms)} arm(s) x {args.seeds} seed(s), {hms(budget)} CPU time each; "
        f"validation: {vspec} ({val_images} images)")
    for c in chosen:
        log(f"  data chose {c['key']}={c['value']}: {c['why']}")
    jobs = [(arm, seed) for seed in range(args.seeds) for arm in arms]
    runs, pending, started = {}, [], time.perf_counter()
    for i, (arm, seed) in enumerate(jobs):
        done = out / "runs" / f"{arm}_s{seed}" / RESULT
        if done.exists():
            runs[i] = json.loads(done.read_text())
            log(f"[{i + 1}/{len(jobs)}] {arm} seed {seed}: finished before, skipped")
        else:
            pending.append(i)

    def announce(i: int) -> None:
        arm, seed = jobs[i]
        left = len(pending) - sum(1 for j in pending if j in runs)
        log(f"[{i + 1}/{len(jobs)}] {arm} seed {seed}: training for {hms(budget)} CPU time "
            f"(about {hms(left * budget)} CPU time left for the {left} run(s) to go, {min(args.jobs, left)} at a "
            f"time; {hms(time.perf_counter() - started)} wall so far)")

    def finished(i: int, result: dict) -> None:
        runs[i] = result
        log(f"[{i + 1}/{len(jobs)}] {jobs[i][0]} seed {jobs[i][1]}: AP {result['AP']:.3f} AP50 {result['AP50']:.3f} "
            f"after {result['cpu_seconds']:.0f} CPU s ({result['wall_seconds_last_session']:.0f} s wall)")

    if args.jobs == 1 or len(pending) <= 1:
        for i in pending:
            announce(i)
            finished(i, train_arm(cfg, *jobs[i], out, args.threads, log))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # Fresh interpreters (spawn): each run owns its torch thread pool and its process CPU clock.
        with ProcessPoolExecutor(min(args.jobs, len(pending)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {}
            for i in pending:
                announce(i)
                futures[pool.submit(train_arm, cfg, *jobs[i], out, args.threads, None)] = i
            for future in as_completed(futures):
                finished(futures[future], future.result())
    runs = [runs[i] for i in range(len(jobs))]
    arms_summary = summarise(runs, budget)
    rows = verdict_rows(arms_summary)
    text = table(arms_summary, rows, budget, args.seeds)
    report = {"train": str(args.train), "val": str(vspec), "val_images": val_images,
              "budget_seconds": budget, "clock": "cpu", "seeds": args.seeds, "threads": args.threads, "jobs": args.jobs,
              "preset": args.preset, "data_choices": chosen, "overrides": list(args.set), "machine": describe_machine(),
              "wall_seconds": round(time.perf_counter() - started, 1),
              "arms": arms_summary, "verdict": rows}
    _write_json(out / "compare.json", report)
    plot(arms_summary, out / "compare.png", f"{args.train}: {val_images} validation images, "
                                            f"{hms(budget)} CPU time per arm")
    header = (f"`bench compare` on {args.train}, validation {vspec} ({val_images} images), "
              f"{budget:.0f} CPU s per arm, {args.seeds} seed(s), {args.threads} thread(s)\n\n")
    atomic_write(out / "compare.md", lambda p: Path(p).write_text(header + text + "\n"))
    log("\n" + header + text)
    log(f"\nwrote {out / 'compare.json'}, {out / 'compare.png'}, {out / 'compare.md'}")
    return 0


class _LinePrefix:
    """A text stream that starts every line written to ``stream`` with ``prefix``."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def train_arm(cfg, arm: str, seed: int, out: Path, threads: int, log) -> dict:
    """Train one arm and seed into ``out/runs/<arm>_s<seed>`` and write its result.json (what makes a
    later call skip it). ``log=None`` in a child process: its lines are printed with the run's name."""
    import torch

    if log is None:
        torch.set_num_threads(threads)
        # Runs side by side share the terminal: every line of this one (training's too) names it.
        sys.stdout = _LinePrefix(sys.stdout, f"[{arm} s{seed}] ")

        def log(msg: str) -> None:
            print(msg, flush=True)

    folder = out / "runs" / f"{arm}_s{seed}"
    if arm in HDETR_ARMS:
        result = run_hdetr(cfg, arm, seed, folder, log)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        result = run_fcos(replace_seed(cfg, seed), seed, log)
    result = finish_run(result)
    _write_json(folder / RESULT, result)
    return result


def replace_seed(cfg, seed: int):
    from dataclasses import replace

    return replace(cfg, train=replace(cfg.train, seed=seed))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (UserError, ConfigError) as e:
        # One line: hdetr's multi-line messages (a dataset's hint, its list of problems) joined.
        print("error: " + "; ".join(line.strip() for line in str(e).splitlines() if line.strip()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
