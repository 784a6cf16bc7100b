"""Ablation of the hybrid matching schemes: the paper's one-to-one baseline against branch, epoch and layer.

Every scheme trains the same small model (two-stage Deformable-DETR with box refinement) on the same
synthetic dataset with the same schedule, for several seeds. The budget is a regime of
``hdetr.bench.regimes``: ``paper`` (default: ImageNet EfficientNet-Lite0, COCO-like scenes) or ``toy``
(``tiny`` backbone from scratch on flat shapes, the ``DEFAULT`` budget below):

- ``baseline``: one-to-one matching, N queries;
- ``baseline_more_queries``: one-to-one matching with N + M queries (as many as the hybrid total);
- ``branch``: N one-to-one queries + M one-to-many queries (targets repeated K times, weight lambda);
  the extra group is dropped at inference;
- ``epoch``: one group of N + M queries, one-to-many for the first rho of the epochs, then one-to-one;
- ``layer``: one group of N + M queries, one-to-many in the first L1 decoder layers.

Each run is evaluated on the validation split after every epoch (the AP curve, against iterations and
against training seconds: data loading + forward/backward/update, evaluation not counted). At the end
the inference speed (eval mode, batch 1, one-to-one queries only) and GFLOPs of one inference forward
are measured side by side, and ``ablation.json``, ``ablation.png`` and a table are written.

Runs are stored per (scheme, seed) under ``--work``; running the command again skips the finished
ones and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("baseline", "baseline_more_queries", "branch", "epoch", "layer")
# How time is measured. "cpu": CPU seconds of the (single-threaded) training process -- what one
# dedicated core would take, and far steadier than wall time when other jobs share the CPU; "wall":
# elapsed seconds (the right clock on a GPU).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
RUN_SECONDS = {"wall": "train_time", "cpu": "train_cpu_time"}  # the engine's record of each clock
PRESET = "synthetic_small"  # the base config; every setting that matters is overridden below
NUM_CLASSES = {"shapes": 4, "coco_like": 6}  # classes of each synthetic dataset style
LATER_FIELDS = ("dataset", "backbone", "backbone_weights", "lr_backbone_ratio", "hidden_dim", "data", "num_classes",
                "max_size", "num_workers")


@dataclass(frozen=True)
class Budget:
    """Everything that decides the results: data, model, schedule, hybrid settings."""

    # data (write_synthetic_dataset, fixed seed)
    train_images: int
    val_images: int
    image_size: int
    train_scales: tuple[int, ...]
    crop: bool  # the random-crop branch of the official augmentation
    data_seed: int
    # schedule
    epochs: int
    lr_drop: int  # lr x0.1 after this many epochs
    batch_size: int
    lr: float
    seeds: int
    # model
    enc_layers: int
    dec_layers: int
    dim_feedforward: int
    nheads: int
    num_queries: int  # N: one-to-one queries
    # hybrid
    num_queries_one2many: int  # M
    k: int
    lambda_one2many: float
    epoch_ratio: float  # rho
    one2many_layers: int  # L1
    # Added with the paper regime (hdetr.bench.regimes); their defaults are the toy budget's settings.
    dataset: str = "shapes"  # write_synthetic_dataset style: shapes | coco_like
    backbone: str = "tiny"
    backbone_weights: str = ""  # model.backbone_weights (ImageNet weights also freeze the stem)
    lr_backbone_ratio: float = 1.0  # train.lr_backbone = lr x this (official with ImageNet weights: 0.1)
    hidden_dim: int = 256
    # A real dataset instead of the synthetic one (any data.train spec hdetr train takes, e.g. a COCO
    # folder), for the paper-size run on a GPU; then num_classes, max_size and num_workers matter too.
    data: str = ""
    num_classes: int = 0  # 0: the synthetic dataset's classes
    max_size: int = 0  # data.max_size; 0: twice the largest training scale
    num_workers: int = 0

    def key(self) -> str:
        """Short hash of the settings that decide a run (seeds excluded: more seeds reuse the old ones).
        Settings added later count only when they differ from their default, so older runs keep their key."""
        d = dataclasses.asdict(self)
        d.pop("seeds")
        for f in dataclasses.fields(self):
            if f.name in LATER_FIELDS and d[f.name] == f.default:
                d.pop(f.name)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


# The default budget: 12 epochs of 320 images (480 iterations of batch 8), lr drop after 10, three
# seeds, five schemes -- under an hour on a 2-core CPU that is not shared. The model is the
# synthetic_small one made cheaper (1 encoder layer, FFN 256, 96 px images, no random crop) and the
# learning rate that of the CPU demo (4e-4, backbone included: it starts from random weights);
# N : M = 1 : 5 and K = 6 as in the paper (300 + 1500, K = 6). Two-stage needs N + M encoder tokens:
# 88 px (the smallest training scale) with 4 levels gives 11*11 + 6*6 + 3*3 + 2*2 = 170 >= 25 + 125.
DEFAULT = Budget(
    train_images=320, val_images=100, image_size=96, train_scales=(88, 96, 104), crop=False, data_seed=0,
    epochs=12, lr_drop=10, batch_size=8, lr=4e-4, seeds=3,
    enc_layers=1, dec_layers=3, dim_feedforward=256, nheads=4, num_queries=25,
    num_queries_one2many=125, k=6, lambda_one2many=1.0, epoch_ratio=2 / 3, one2many_layers=2,
)
# --quick: checks that everything works end to end in a few minutes; far too short to rank schemes.
QUICK = dataclasses.replace(DEFAULT, train_images=24, val_images=16, epochs=3, lr_drop=2, seeds=1)
BUDGETS = {"default": DEFAULT, "quick": QUICK}


def tokens(side: int, levels: int = 4) -> int:
    """Encoder tokens of a ``side`` x ``side`` image: strides 8, 16, 32 and one extra stride-2 level."""
    total, n = 0, math.ceil(side / 8)
    for _ in range(levels):
        total += n * n
        n = math.ceil(n / 2)
    return total


def check_budget(b: Budget) -> None:
    from ..errors import UserError

    total = b.num_queries + b.num_queries_one2many
    if tokens(min(b.train_scales)) < total:
        raise UserError(f"two-stage needs N + M = {total} encoder tokens, but a {min(b.train_scales)} px image "
                        f"has only {tokens(min(b.train_scales))}: raise the image size or lower the queries")
    if not 1 <= b.lr_drop <= b.epochs:
        raise UserError(f"lr_drop must be in [1, epochs={b.epochs}], got {b.lr_drop}")
    if b.train_images < b.batch_size:
        raise UserError(f"train_images ({b.train_images}) must be at least batch_size ({b.batch_size})")


def scheme_queries(scheme: str, b: Budget) -> tuple[int, int]:
    """(queries in training, queries at inference) of a scheme."""
    total = b.num_queries + b.num_queries_one2many
    return {"baseline": (b.num_queries, b.num_queries), "branch": (total, b.num_queries)}.get(scheme, (total, total))


def scheme_overrides(scheme: str, b: Budget) -> list[str]:
    """Config overrides of one scheme (on top of the common ones)."""
    n, m = b.num_queries, b.num_queries_one2many
    hybrid = [f"hybrid.k={b.k}", f"hybrid.lambda_one2many={b.lambda_one2many}",
              f"hybrid.num_queries_one2many={m}", f"hybrid.epoch_ratio={b.epoch_ratio}",
              f"hybrid.one2many_layers={b.one2many_layers}"]
    table = {
        "baseline": ["hybrid.scheme=none", f"model.num_queries={n}"],
        "baseline_more_queries": ["hybrid.scheme=none", f"model.num_queries={n + m}"],
        "branch": ["hybrid.scheme=branch", f"model.num_queries={n}"],
        "epoch": ["hybrid.scheme=epoch", f"model.num_queries={n + m}"],
        "layer": ["hybrid.scheme=layer", f"model.num_queries={n + m}"],
    }
    return table[scheme] + hybrid


def common_overrides(b: Budget, data_dir: Path, seed: int) -> list[str]:
    scales = ",".join(str(s) for s in b.train_scales)
    classes = b.num_classes or NUM_CLASSES[b.dataset]
    return [
        f"model.backbone={b.backbone}", "model.pretrained_backbone=false", f"model.backbone_weights={b.backbone_weights}",
        f"model.num_classes={classes}", f"model.hidden_dim={b.hidden_dim}", f"model.nheads={b.nheads}", f"model.enc_layers={b.enc_layers}",
        f"model.dec_layers={b.dec_layers}", f"model.dim_feedforward={b.dim_feedforward}",
        "model.num_feature_levels=4", "model.two_stage=true", "model.with_box_refine=true",
        "model.mixed_selection=true", "model.look_forward_twice=true", "model.dropout=0.0",
        f"model.topk={min(100, b.num_queries * classes)}",
        f"train.epochs={b.epochs}", f"train.lr_drop={b.lr_drop}", f"train.lr={b.lr}",
        f"train.lr_backbone={b.lr * b.lr_backbone_ratio}",  # toy: the tiny backbone starts from random weights
        f"train.batch_size={b.batch_size}", "train.grad_accum=1", f"train.num_workers={b.num_workers}", f"train.seed={seed}",
        "train.eval_every=1", "train.log_every=10", "train.max_iters=0", "train.save_every=0",
        "train.amp=none", "train.ema=false",
        f"data.train={data_dir}", "data.val=", f"data.train_scales=[{scales}]",
        f"data.max_size={b.max_size or 2 * max(b.train_scales)}", f"data.val_scale={b.image_size}", f"data.crop={str(b.crop).lower()}",
    ]


def run_overrides(scheme: str, seed: int, b: Budget, data_dir: Path) -> list[str]:
    return common_overrides(b, data_dir, seed) + scheme_overrides(scheme, b)


# -- one training run (in a child process, or in this one) ------------------------------------------
RESULT_FILE = "result.json"
LOG_FILE = "train.log"


def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def train_run(spec: dict) -> dict:
    """Train one (scheme, seed); write and return its result. Resumes from last.pt if there is one."""
    import torch

    from ..config import load_config
    from ..engine.runlog import METRICS_FILE, read_records
    from ..engine.train import LAST, train

    run_dir = Path(spec["run_dir"])
    lock = _try_lock(run_dir)
    if lock is None:
        raise RuntimeError(f"{run_dir} is locked: another process is training this run")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cfg = load_config(PRESET, spec["overrides"])
    device = torch.device(spec["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resumed = (run_dir / LAST).exists()
    start = time.perf_counter()
    result = train(cfg, run_dir, resume=resumed, device=str(device), progress=False)
    wall = time.perf_counter() - start
    evals = [r for r in read_records(run_dir / METRICS_FILE) if "eval" in r]
    if not evals:
        raise RuntimeError(f"{run_dir}: the run recorded no evaluation")
    last = evals[-1]["eval"]
    out = {
        "scheme": spec["scheme"],
        "seed": spec["seed"],
        "budget_key": spec["budget_key"],
        "overrides": spec["overrides"],
        "AP": last["AP"], "AP50": last["AP50"], "AP75": last["AP75"],
        # after every epoch: iterations done, training seconds so far (wall and CPU), val metrics
        "evals": [{"step": r["step"], "train_time": r["train_time"], "train_cpu_time": r["train_cpu_time"],
                   **{k: r["eval"][k] for k in ("AP", "AP50", "AP75")}} for r in evals],
        "steps": result.steps,
        "train_time": result.train_time,
        "train_cpu_time": result.train_cpu_time,
        "peak_mem_mb": _peak_memory_mb(device),
        "wall_s": wall,
        "resumed": resumed,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, run_dir / RESULT_FILE)
    lock.close()
    return out


def _child(spec: dict) -> None:
    """Entry point of a child process: the engine's log lines go to the run's train.log."""
    log = open(Path(spec["run_dir"]) / LOG_FILE, "a", buffering=1)
    sys.stdout = sys.stderr = log
    try:
        train_run(spec)
    except BaseException:
        import traceback

        traceback.print_exc(file=log)
        log.flush()
        raise SystemExit(1)


def _read_result(run_dir: Path, budget_key: str) -> dict | None:
    path = run_dir / RESULT_FILE
    if not path.exists():
        return None
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return res if res.get("budget_key") == budget_key and "evals" in res else None


def run_curve(res: dict, clock: str) -> list[list[float]]:
    """[iteration, training seconds by ``clock``, AP] after every epoch of one run."""
    return [[e["step"], e[RUN_SECONDS[clock]], e["AP"]] for e in res["evals"]]


def run_s_per_iter(res: dict, clock: str) -> float:
    return res[RUN_SECONDS[clock]] / max(res["steps"], 1)


# -- inference speed and FLOPs, side by side ---------------------------------------------------------
def _load_trained(run_dir: Path, device):
    from ..checkpoint import build_detector_model, load_weights

    loaded = load_weights(run_dir / "last.pt")  # the EMA weights when the run kept them
    return build_detector_model(loaded, device).requires_grad_(False), loaded.cfg


def inference_flops(model, side: int, device) -> float:
    """GFLOPs of one eval-mode forward of a side x side image, as FlopCounterMode counts them
    (convolutions and matrix products; the deformable sampling itself has no FLOP formula there)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.zeros(1, 3, side, side, device=device)
    mask = torch.zeros(1, side, side, dtype=torch.bool, device=device)
    counter = FlopCounterMode(display=False)
    # Parameters must not require grad here: FlopCounterMode's module tracker fails on them under no_grad.
    with torch.no_grad(), counter:
        model(images, mask)
    return counter.get_total_flops() / 1e9


def inference_speed(models: dict, side: int, device, rounds: int = 5, per_round: int = 10,
                    clock: str = "wall") -> dict[str, float]:
    """Images/s of eval-mode forwards (batch 1, one-to-one queries only), the models timed in turn."""
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, side, side, generator=g).to(device)
    mask = torch.zeros(1, side, side, dtype=torch.bool, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():  # warm-up
            for _ in range(2):
                model(images, mask)
        for _ in range(rounds):
            for name, model in models.items():
                sync()
                t0 = now()
                for _ in range(per_round):
                    model(images, mask)
                sync()
                times[name].append((now() - t0) / per_round)
    return {name: 1.0 / statistics.median(ts) for name, ts in times.items()}


def train_step_speed(overrides: dict[str, list[str]], device: str, work: Path, rounds: int = 3,
                     steps: int = 2, clock: str = "wall") -> dict[str, float]:
    """Seconds per training step of each scheme, measured side by side: one engine ``Trainer`` per
    scheme, the same batches, the schemes timed in turn (median over rounds). On a shared machine this
    gives fairer ratios than the runs themselves, which ran at different times. The epoch scheme is
    timed with both of its matching plans and weighted by the share of epochs each one gets."""
    import shutil

    from ..config import load_config
    from ..engine.train import Trainer
    from ..hybrid import matching_plan

    scratch = work / "step_timing"
    shutil.rmtree(scratch, ignore_errors=True)
    trainers, batches, plans = {}, {}, {}
    for name, ov in overrides.items():
        cfg = load_config(PRESET, ov)
        trainer = Trainer(cfg, scratch / name, device=device, progress=False)
        it = iter(trainer.loader)
        batches[name] = [next(it) for _ in range(steps)]
        epochs = cfg.train.epochs
        by_plan: dict = {}
        for e in range(epochs):
            plan = matching_plan(cfg, e)
            by_plan[plan] = by_plan.get(plan, 0) + 1 / epochs
        trainers[name], plans[name] = trainer, by_plan
    import torch

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    now = CLOCKS[clock]
    times: dict[str, dict] = {name: {plan: [] for plan in plans[name]} for name in trainers}
    for r in range(rounds + 1):  # round 0 warms up
        for name, trainer in trainers.items():
            for plan in plans[name]:
                sync()
                t0 = now()
                for b in batches[name]:
                    trainer.train_step([b], plan)
                sync()
                if r:
                    times[name][plan].append((now() - t0) / steps)
    for trainer in trainers.values():
        if trainer.runlog is not None:
            trainer.runlog.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return {name: sum(w * statistics.median(times[name][plan]) for plan, w in plans[name].items())
            for name in trainers}


NMS_FILE = "nms_diagnostic.json"


def nms_diagnostic(run_dir: Path, device, data_dir: Path, iou: float = 0.7) -> dict[str, float]:
    """Val AP of a run's final model with and without class-wise NMS over its detections (cached in
    the run folder). Not part of the comparison -- DETRs are scored without NMS -- but it tells
    duplicate predictions (which NMS removes) from detections that are missing or badly placed."""
    cache = run_dir / NMS_FILE
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("iou") == iou:
            return data
    from collections import defaultdict

    import torch
    from torchvision.ops import batched_nms

    from ..engine.distributed import DistInfo
    from ..engine.evaluate import coco_metrics
    from ..engine.inference import predict_dataset
    from ..engine.loaders import eval_loader, load_split

    model, cfg = _load_trained(run_dir, device)
    # The dataset of this invocation, not the path saved in the run: runs may have been trained from
    # another working directory.
    split = load_split(str(data_dir), "val", cfg, train=False)
    loader = eval_loader(split.dataset, cfg.train.batch_size, 0, DistInfo())
    dets = predict_dataset(model, loader, split.dataset.category_map, device, cfg.model.topk, progress=False)
    per_image = defaultdict(list)
    for d in dets:
        per_image[d["image_id"]].append(d)
    kept = []
    for ds in per_image.values():
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in ds)], dtype=torch.float64)
        scores = torch.tensor([d["score"] for d in ds], dtype=torch.float64)
        labels = torch.tensor([d["category_id"] for d in ds])
        kept += [ds[i] for i in batched_nms(boxes, scores, labels, iou).tolist()]
    raw, nms = coco_metrics(split.dataset.coco, dets), coco_metrics(split.dataset.coco, kept)
    data = {"iou": iou, **{k: raw[k] for k in ("AP", "AP50", "AP75")},
            **{f"{k}_nms": nms[k] for k in ("AP", "AP50", "AP75")},
            "detections": len(dets), "detections_nms": len(kept)}
    cache.write_text(json.dumps(data, indent=1) + "\n")
    return data


def format_nms_table(diag: dict) -> str:
    rows = [f"{'scheme':<22} {'AP (no NMS)':>13} {'AP after NMS':>13} {'AP50 after NMS':>15}   "
            f"(diagnostic: class-wise NMS at IoU {diag['iou']} over the final detections)"]
    for name, d in diag["schemes"].items():
        def ms(key):
            m, sd = _mean_std(d[key])
            return f"{m:.3f}±{sd:.3f}"
        rows.append(f"{name:<22} {ms('AP'):>13} {ms('AP_nms'):>13} {ms('AP50_nms'):>15}")
    return "\n".join(rows)


# -- aggregation -------------------------------------------------------------------------------------
def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def mean_curve(results: list[dict], clock: str) -> list[list[float]]:
    """[iteration, training seconds, AP] averaged over seeds, at the iterations every seed evaluated."""
    per_seed = [{int(p[0]): p for p in run_curve(r, clock)} for r in results]
    common = sorted(set.intersection(*(set(c) for c in per_seed))) if per_seed else []
    return [[it, statistics.fmean(c[it][1] for c in per_seed), statistics.fmean(c[it][2] for c in per_seed)]
            for it in common]


def interpolate(curve: list[list[float]], seconds: float) -> float:
    """AP of a [iteration, seconds, AP] curve at ``seconds`` (linear between evaluations; NaN outside)."""
    pts = [(p[1], p[2]) for p in curve]
    if not pts or seconds < pts[0][0] - 1e-9 or seconds > pts[-1][0] + 1e-9:
        return math.nan
    for (s0, a0), (s1, a1) in zip(pts, pts[1:]):
        if s0 <= seconds <= s1:
            return a0 if s1 == s0 else a0 + (a1 - a0) * (seconds - s0) / (s1 - s0)
    return pts[-1][1]


def machine_description(device: str, threads: int, jobs: int) -> str:
    import torch

    from .machine import cpu_model

    cpu = cpu_model()
    desc = f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, torch {torch.__version__}"
    if device.startswith("cuda"):
        desc += f", {torch.cuda.get_device_name(0)}"
    else:
        desc += f", CPU training: {threads} thread(s) per run, {jobs} run(s) at a time"
    return desc


def aggregate(results: dict[str, list[dict]], infer: dict[str, float], gflops: dict[str, float],
              config: dict, machine: str, clock: str) -> dict:
    schemes = {}
    for name in SCHEMES:
        rs = results.get(name) or []
        if not rs:
            continue
        schemes[name] = {
            "AP": [r["AP"] for r in rs],
            "AP50": [r["AP50"] for r in rs],
            "AP75": [r["AP75"] for r in rs],
            "curve": mean_curve(rs, clock),
            "train_s_per_iter": statistics.fmean(run_s_per_iter(r, clock) for r in rs),
            "peak_mem_mb": statistics.fmean(r["peak_mem_mb"] for r in rs),
            "infer_img_per_s": infer.get(name, math.nan),
            "gflops": gflops.get(name, math.nan),
        }
    return {"schemes": schemes, "config": config, "machine": machine}


def equal_time_seconds(doc: dict) -> float:
    """The longest training time every scheme reached (usually the baseline's whole run)."""
    ends = [s["curve"][-1][1] for s in doc["schemes"].values() if s["curve"]]
    return min(ends) if ends else math.nan


def format_table(doc: dict) -> str:
    """The paper's columns: AP (mean +- std over seeds) at equal iterations, AP at equal training time,
    training time per iteration, peak memory, inference speed and GFLOPs."""
    cfg = doc.get("config", {})
    budget = cfg.get("budget", {})
    t_eq = equal_time_seconds(doc)
    base = doc["schemes"].get("baseline")
    rows = []
    head = (f"{'scheme':<22} {'queries':>9} {'AP':>13} {'AP50':>13} {'AP75':>13} {'AP@' + format(t_eq, '.0f') + 's':>8} "
            f"{'s/iter':>7} {'x base':>6} {'x base*':>7} {'peak MB':>8} {'img/s':>7} {'GFLOPs':>6}")
    rows.append(head)
    rows.append("-" * len(head))
    for name, s in doc["schemes"].items():
        q = cfg.get("queries", {}).get(name)
        qs = f"{q[0]}/{q[1]}" if q else "?"

        def ms(key):
            m, sd = _mean_std(s[key])
            return f"{m:.3f}±{sd:.3f}"

        ratio = s["train_s_per_iter"] / base["train_s_per_iter"] if base else math.nan
        side = cfg.get("train_s_per_iter_side_by_side", {})
        ratio_side = side[name] / side["baseline"] if name in side and "baseline" in side else math.nan
        rows.append(f"{name:<22} {qs:>9} {ms('AP'):>13} {ms('AP50'):>13} {ms('AP75'):>13} "
                    f"{interpolate(s['curve'], t_eq):>8.3f} {s['train_s_per_iter']:>7.3f} {ratio:>6.2f} {ratio_side:>7.2f} "
                    f"{s['peak_mem_mb']:>8.0f} {s['infer_img_per_s']:>7.1f} {s['gflops']:>6.2f}")
    seeds = max((len(s["AP"]) for s in doc["schemes"].values()), default=0)
    its = max((s["curve"][-1][0] for s in doc["schemes"].values() if s["curve"]), default=0)
    rows.append(f"AP/AP50/AP75: final, mean±std over {seeds} seed(s), after {its} iterations "
                f"({budget.get('epochs', '?')} epochs); AP@{t_eq:.0f}s: AP of the mean curve after {t_eq:.0f} s "
                f"of training; s/iter and x base: the runs' training time per iteration; x base*: the same "
                f"ratio timed side by side; queries: train/inference")
    return "\n".join(rows)


def format_markdown(doc: dict) -> str:
    """The table of ``format_table`` in Markdown (for docs/benchmarks.md)."""
    cfg = doc.get("config", {})
    side = cfg.get("train_s_per_iter_side_by_side", {})
    t_eq = equal_time_seconds(doc)
    base = doc["schemes"].get("baseline")
    lines = [f"| scheme | queries (train / inference) | AP | AP50 | AP75 | AP after {t_eq:.0f} s | train s/iter "
             f"| x baseline (runs / side by side) | peak RSS MB | inference img/s | GFLOPs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in doc["schemes"].items():
        q = cfg.get("queries", {}).get(name, ["?", "?"])

        def ms(key):
            m, sd = _mean_std(s[key])
            return f"{m:.3f} ± {sd:.3f}"

        ratio = s["train_s_per_iter"] / base["train_s_per_iter"] if base else math.nan
        ratio_side = side[name] / side["baseline"] if name in side and "baseline" in side else math.nan
        lines.append(f"| {name} | {q[0]} / {q[1]} | {ms('AP')} | {ms('AP50')} | {ms('AP75')} | "
                     f"{interpolate(s['curve'], t_eq):.3f} | {s['train_s_per_iter']:.2f} | {ratio:.2f} / {ratio_side:.2f} | "
                     f"{s['peak_mem_mb']:.0f} | {s['infer_img_per_s']:.1f} | {s['gflops']:.2f} |")
    return "\n".join(lines)


COLOURS = {"baseline": "tab:gray", "baseline_more_queries": "tab:brown", "branch": "tab:red",
           "epoch": "tab:blue", "layer": "tab:green"}


def plot_marks(budget: Budget, iters_per_epoch: int, schemes) -> dict[str, int]:
    """Vertical lines for the iteration axis: the lr drop, and the epoch scheme's switch when it is plotted."""
    from ..hybrid import one2many_epoch_count

    marks = {"lr x0.1": budget.lr_drop * iters_per_epoch}
    if "epoch" in schemes:
        marks["epoch scheme: one-to-one from here"] = one2many_epoch_count(budget.epochs, budget.epoch_ratio) * iters_per_epoch
    return marks


def plot(results: dict[str, list[dict]], path: Path, title: str, clock: str,
         marks: dict[str, int] | None = None) -> None:
    """AP against iterations and against training seconds; mean over seeds with a +-std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name in SCHEMES:
        rs = results.get(name) or []
        if not rs:
            continue
        per_seed = [{int(p[0]): p for p in run_curve(r, clock)} for r in rs]
        its = sorted(set.intersection(*(set(c) for c in per_seed)))
        if not its:
            continue
        ap = np.array([[c[i][2] for i in its] for c in per_seed])
        secs = np.array([[c[i][1] for i in its] for c in per_seed]).mean(0)
        m, sd = ap.mean(0), ap.std(0, ddof=1) if len(rs) > 1 else np.zeros(len(its))
        for ax, x in ((axes[0], np.array(its)), (axes[1], secs)):
            ax.plot(x, m, marker="o", markersize=3, color=COLOURS[name],
                    label=f"{name} ({len(rs)} seed{'s' if len(rs) > 1 else ''})")
            ax.fill_between(x, m - sd, m + sd, color=COLOURS[name], alpha=0.15, linewidth=0)
    for i, (label, it) in enumerate((marks or {}).items()):
        axes[0].axvline(it, color="k", linestyle=":" if i else "--", linewidth=0.8)
        axes[0].annotate(label, (it, 1), xycoords=("data", "axes fraction"), xytext=(-3, -3 - 10 * i),
                         textcoords="offset points", ha="right", va="top", fontsize=7)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel(f"training {'CPU ' if clock == 'cpu' else ''}seconds (mean over seeds; evaluation excluded)")
    axes[0].set_ylabel("val AP")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")  # the curves rise to the upper right
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


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
    from ..errors import UserError

    types = {f.name: f.type for f in dataclasses.fields(Budget)}
    changes = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise UserError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        typ = types[key]
        try:
            if "bool" in str(typ):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                value = raw.lower() in ("true", "1", "yes")
            elif "tuple" in str(typ):
                value = tuple(int(v) for v in raw.strip("()[] ").split(",") if v.strip())
            elif "int" in str(typ):
                value = int(raw)
            elif "float" in str(typ):
                value = float(eval_fraction(raw))
            else:
                value = raw
        except ValueError:
            raise UserError(f"--set {item!r}: cannot read {raw!r} as {typ}") from None
        changes[key] = value
    return dataclasses.replace(b, **changes)


def eval_fraction(raw: str) -> float:
    """'2/3' or '0.5' -> float."""
    if "/" in raw:
        a, b = raw.split("/", 1)
        return float(a) / float(b)
    return float(raw)


def _ensure_dataset(work: Path, b: Budget) -> Path:
    from ..data.synthetic import write_synthetic_dataset

    if b.data:
        return Path(b.data)
    style = "" if b.dataset == "shapes" else f"{b.dataset}-"
    data_dir = work / f"data-{style}{b.image_size}px-{b.train_images}-{b.val_images}-seed{b.data_seed}"
    stamp = data_dir / "complete.json"
    if not stamp.exists():
        summary = write_synthetic_dataset(data_dir, b.train_images, b.val_images, b.image_size, b.data_seed,
                                          style=b.dataset)
        stamp.write_text(json.dumps(summary, indent=1) + "\n")
    return data_dir


RETRIES = 3  # a run whose process was killed by a signal is resumed from its last epoch this many times
LOCK_FILE = ".lock"


def _try_lock(run_dir: Path):
    """An exclusive lock on the run folder (released when its holder exits, however it exits), or None
    when another process holds it: a run left behind by a killed session is still training there."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks: trust that one session runs at a time
        return open(os.devnull)
    f = open(run_dir / LOCK_FILE, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _run_pending(pending: list[dict], jobs: int, log) -> list[dict]:
    """Run the specs, ``jobs`` child processes at a time (0: in this process). Returns the results in
    the order the runs finished; raises UserError naming the log of a failed run.

    A child killed by a signal (say, by someone else's ``pkill``) is started again and resumes from the
    run's last checkpoint, up to RETRIES times; a run whose folder is locked by a process that outlived
    an earlier session is waited for, not started twice."""
    import multiprocessing as mp

    from ..errors import UserError

    done: list[dict] = []
    if jobs == 0:
        for spec in pending:
            log(f"  training {spec['scheme']} seed {spec['seed']} ...")
            res = train_run(spec)
            done.append(res)
            log(_run_line(res))
        return done
    ctx = mp.get_context("spawn")
    running: list[tuple[object, dict]] = []
    queue = list(pending)
    failures, retries, waiting = [], {}, set()
    while queue or running:
        for spec in list(queue):
            if len(running) >= jobs:
                break
            run_dir = Path(spec["run_dir"])
            res = _read_result(run_dir, spec["budget_key"])
            if res is not None:  # finished by a process of an earlier session
                queue.remove(spec)
                done.append(res)
                log(_run_line(res))
                continue
            lock = _try_lock(run_dir)
            if lock is None:
                if spec["run_dir"] not in waiting:
                    waiting.add(spec["run_dir"])
                    log(f"  {spec['scheme']} seed {spec['seed']}: another process is training it; waiting")
                continue
            lock.close()  # the child takes it
            queue.remove(spec)
            proc = ctx.Process(target=_child, args=(spec,), name=f"{spec['scheme']}-seed{spec['seed']}")
            proc.start()
            log(f"  started {spec['scheme']} seed {spec['seed']} (log: {run_dir / LOG_FILE})")
            running.append((proc, spec))
        time.sleep(0.5 if running else 5)
        for proc, spec in list(running):
            if proc.is_alive():
                continue
            proc.join()
            running.remove((proc, spec))
            name = f"{spec['scheme']} seed {spec['seed']}"
            if proc.exitcode != 0:
                n = retries.get(spec["run_dir"], 0)
                if proc.exitcode < 0 and n < RETRIES:  # killed by a signal: resume it
                    retries[spec["run_dir"]] = n + 1
                    log(f"  {name} was killed (signal {-proc.exitcode}); resuming it from its last checkpoint")
                    queue.insert(0, spec)
                    continue
                failures.append(spec)
                log(f"  FAILED {name} (exit code {proc.exitcode}); see {Path(spec['run_dir']) / LOG_FILE}")
                continue
            res = json.loads((Path(spec["run_dir"]) / RESULT_FILE).read_text())
            done.append(res)
            log(_run_line(res))
    if failures:
        names = ", ".join(f"{s['scheme']} seed {s['seed']}" for s in failures)
        raise UserError(f"{len(failures)} run(s) failed: {names}; their logs are in the run folders. "
                        f"Running the command again resumes them.")
    return done


def _run_line(res: dict) -> str:
    curve = " ".join(f"{e['AP']:.3f}" for e in res["evals"])
    return (f"  done {res['scheme']} seed {res['seed']}: AP {res['AP']:.3f} AP50 {res['AP50']:.3f} "
            f"AP75 {res['AP75']:.3f}; training {res['train_time']:.0f} s wall, {res['train_cpu_time']:.0f} s CPU "
            f"({run_s_per_iter(res, 'wall'):.3f} / {run_s_per_iter(res, 'cpu'):.3f} s/iter), "
            f"peak {res['peak_mem_mb']:.0f} MB; AP per epoch: {curve}")


def run_ablation(args) -> int:
    import torch

    from ..checkpoint import atomic_write
    from ..errors import UserError

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
            res = _read_result(run_dir, key)
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
    for res in _run_pending(specs, jobs, log):
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
        model, _ = _load_trained(work / scheme / "seed0", dev)
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
                   f"size={budget.image_size}, seed={budget.data_seed}, style={budget.dataset!r})",
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
    atomic_write(json_path, lambda p: Path(p).write_text(json.dumps(doc, indent=1) + "\n"))
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
    atomic_write(diag_path, lambda p: Path(p).write_text(json.dumps(diag, indent=1) + "\n"))
    log("")
    log(format_table(doc))
    log("")
    log(format_nms_table(diag))
    log(f"\nwrote {json_path}, {png_path} and {diag_path}")
    return 0


run = run_ablation  # the hdetr.commands.bench convention: each benchmark module has run(args)
