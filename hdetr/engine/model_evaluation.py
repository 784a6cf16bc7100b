"""Evaluate a saved model on a dataset split: what ``hdetr eval`` and ``hdetr demo`` both run.

The model's weights and the split are checked against each other (same categories, a class count the
model predicts) before any image is run; then every rank runs its share of the images (or, with
``tile``, one process runs sliced inference image by image) and rank 0 gets all the detections.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from ..weights import LoadedWeights, build_detector_model, load_weights
from ..data.categories import same_categories, CategoryMap
from ..errors import UserError
from . import distributed
from .inference import gather_detections, score_detections
from .loaders import Split, eval_loader, load_split


@dataclass
class ModelEvaluation:
    loaded: LoadedWeights
    split: Split
    category_map: CategoryMap
    detections: list[dict] | None  # COCO results on rank 0, None on the other ranks

    @property
    def is_main(self) -> bool:
        return self.detections is not None

    def metrics(self) -> dict[str, float]:
        """COCO metrics (LVIS metrics for LVIS annotations); rank 0 only."""
        return score_detections(self.split, self.detections)


def eval_config(cfg, imgsz: int | None):
    """The model's config with the evaluation size of ``imgsz`` (a copy; the long-side cap scales along)."""
    if imgsz is None:
        return cfg
    d = cfg.data
    max_size = None if d.max_size is None else round(d.max_size * imgsz / d.val_scale)
    return replace(cfg, data=replace(d, val_scale=imgsz, max_size=max_size))


def check_categories(loaded: LoadedWeights, split: Split, checkpoint) -> CategoryMap:
    """The categories the detections are reported in; refuses a model trained on other categories."""
    cmap = loaded.category_map or split.dataset.category_map
    if loaded.category_map is not None:
        same_categories(loaded.category_map, split.dataset.category_map, str(checkpoint), str(split.ann_file))
    if cmap.num_classes != loaded.cfg.model.num_classes:
        raise UserError(
            f"{checkpoint} predicts {loaded.cfg.model.num_classes} classes but {split.ann_file} "
            f"has {cmap.num_classes}: this model was not trained on these categories"
        )
    return cmap


def check_something_to_evaluate(split: Split) -> None:
    """Refuse a split that leaves nothing to measure: no images, or no ground-truth box (every COCO
    metric would be undefined and print as n/a)."""
    coco = split.dataset.coco
    if len(split.dataset) == 0:
        raise UserError(f"{split.ann_file}: the split lists no images: nothing to evaluate")
    boxes = sum(1 for a in coco.anns.values() if not a.get("iscrowd", 0))
    if boxes == 0:
        crowd = f" ({len(coco.anns)} crowd region(s) only)" if coco.anns else ""
        raise UserError(f"{split.ann_file}: the split has {len(split.dataset)} image(s) but no annotated "
                        f"object{crowd}: the metrics would be undefined; evaluate on a split with annotations")


def tiled_detections(loaded, split, cmap, device, options: dict, progress) -> list[dict]:
    """Sliced inference over the split, image by image, through ``Detector`` (the path of hdetr predict)."""
    from tqdm import tqdm

    from ..api import Detector, default_class_names

    names = default_class_names(loaded.cfg, loaded.class_names, cmap)
    detector = Detector(build_detector_model(loaded, device), loaded.cfg, names, cmap, device)
    dets = []
    for image_id in tqdm(split.dataset.ids, desc="eval (tiled)", leave=False,
                         disable=None if progress is None else not progress):
        found = detector.predict(split.dataset.load_image(image_id), threshold=0.0, **options)
        dets += [{k: v for k, v in d.items() if k != "category_name"} for d in detector.coco_results(found, image_id)]
    return dets


def evaluate_model(checkpoint: str | Path, data: str, split: str = "val", *, device: str | None = None,
                   batch_size: int = 2, workers: int = 2, imgsz: int | None = None, tile: dict | None = None,
                   progress: bool | None = None,
                   check_split: Callable[[Split], None] | None = None,
                   single_process: bool = False) -> ModelEvaluation:
    """Load ``checkpoint``, check it fits ``data``'s ``split``, and run it over every image.

    ``tile``: ``Detector.predict`` keyword arguments of sliced inference (one process only).
    ``check_split``: called with the loaded split before any image is run (e.g. to refuse an output
    path inside the dataset before minutes of work).
    ``single_process``: this process alone runs every image, even under torchrun (the report that
    rank 0 writes after training).
    """
    loaded = load_weights(checkpoint)
    if single_process:
        info = distributed.DistInfo()
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        info, dev = distributed.init_distributed(device)
    try:
        data_split = load_split(data, split, eval_config(loaded.cfg, imgsz), train=False)
        check_something_to_evaluate(data_split)
        cmap = check_categories(loaded, data_split, checkpoint)
        if check_split is not None:
            check_split(data_split)
        if tile is not None:
            if info.world_size > 1:
                raise UserError("--tile evaluates in one process; run it without torchrun")
            dets = tiled_detections(loaded, data_split, cmap, dev, {**tile, "imgsz": imgsz}, progress)
        else:
            model = build_detector_model(loaded, dev)
            loader = eval_loader(data_split.dataset, batch_size, workers, info)
            dets = gather_detections(model, loader, cmap, dev, loaded.cfg.model.topk, progress=progress, info=info)
    finally:
        if not single_process:
            distributed.cleanup()
    return ModelEvaluation(loaded, data_split, cmap, dets if info.is_main else None)
