"""The ablation's side-by-side measurements of trained runs: inference speed, GFLOPs, training-step
speed, and the NMS diagnostic."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .ablation_setup import CLOCKS, PRESET
from .ablation_report import mean_std

# -- inference speed and FLOPs, side by side ---------------------------------------------------------
def load_trained(run_dir: Path, device):
    from hdetr.weights import build_detector_model, load_weights

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

    from hdetr.config import load_config
    from hdetr.engine.train import Trainer
    from hdetr.hybrid import matching_plan

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

    from hdetr.engine.distributed import DistInfo
    from hdetr.engine.evaluate import coco_metrics
    from hdetr.engine.inference import predict_dataset
    from hdetr.engine.loaders import eval_loader, load_split

    model, cfg = load_trained(run_dir, device)
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
            m, sd = mean_std(d[key])
            return f"{m:.3f}±{sd:.3f}"
        rows.append(f"{name:<22} {ms('AP'):>13} {ms('AP_nms'):>13} {ms('AP50_nms'):>15}")
    return "\n".join(rows)
