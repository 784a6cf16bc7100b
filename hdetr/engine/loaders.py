"""Datasets and DataLoaders for training and evaluation, from the ``data`` section of the config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..data.categories import CategoryMap
from ..data.coco import CocoDetection
from ..data.layouts import DataSource, has_own_split, resolve_source
from ..data.collate import collate
from ..data.transforms import DEFAULT_CROP, DEFAULT_SCALES, build_transforms, eval_transforms
from ..errors import UserError, child_error
from .distributed import DistInfo
from .sampling import EpochBatches, SeededSamples, worker_init

# The official crop branch (resize to 400/500/600, crop 384..600) is tuned for 480..800 scales; other
# scale ranges get it scaled by the same factor.
def crop_for_scales(scales: list[int]) -> tuple[tuple[int, ...], int, int]:
    f = max(scales) / max(DEFAULT_SCALES)
    pre, lo, hi = DEFAULT_CROP
    return tuple(max(8, round(s * f)) for s in pre), max(8, round(lo * f)), max(8, round(hi * f))


def locate(spec, split: str) -> DataSource:
    """The dataset ``spec`` names (hdetr.data.layouts: folder of any known layout, ``LAYOUT:FOLDER``,
    annotations .json, ``IMAGES_DIR:ANNOTATIONS.json`` or YOLO data.yaml), as a ``UserError`` if none."""
    return resolve_source(spec, split)


def val_spec(cfg: Config) -> str | None:
    """Where to evaluate: ``data.val``, else the validation split next to ``data.train`` if it has one
    of its own (a single-split dataset is not evaluated on its training images)."""
    if cfg.data.val:
        return cfg.data.val
    return cfg.data.train if has_own_split(cfg.data.train, "val") else None


def resolve_splits(cfg: Config) -> tuple[DataSource, DataSource | None]:
    """The run's training source and its validation source (None: nothing to evaluate on), each
    resolved once: the data check, the datasets and the report read these same sources (a YOLO or VOC
    source keeps what it read)."""
    train = locate(cfg.data.train, "train")
    if cfg.data.val:
        return train, locate(cfg.data.val, "val")
    try:
        val = resolve_source(cfg.data.train, "val")
    except UserError:
        return train, None
    return train, None if val.single_split else val
class Loader(DataLoader):
    """A DataLoader whose workers' errors arrive as the worker raised them: same type, the worker's own
    message (``errors.child_error``), not "Caught X in DataLoader worker process N" and its traceback.

    ``close()`` stops the workers of the iterations still open. A loop left by an exception keeps its
    iterator alive in the traceback; when the garbage collector takes it later, it may close the worker
    queues before the iterator, and torch then waits 5 s for each worker before killing it: a stall
    in the user's Python session after the error. The loops that own a loader close it on the way out."""

    def __iter__(self):
        self._latest = super().__iter__()  # an error always comes from the iteration in progress
        return _Unwrapping(self._latest)

    def close(self) -> None:
        stop = getattr(getattr(self, "_latest", None), "_shutdown_workers", None)  # none without workers
        if stop is not None:
            stop()  # torch's own shutdown; a no-op once the iteration has ended


def close_loader(loader) -> None:
    """``Loader.close`` for any loader (a plain DataLoader has no workers of ours to stop)."""
    if isinstance(loader, Loader):
        loader.close()


class _Unwrapping:
    def __init__(self, it):
        self._it = it

    def __iter__(self):
        return self

    def __len__(self):
        return len(self._it)

    def __next__(self):
        try:
            return next(self._it)
        except StopIteration:
            raise
        except Exception as e:
            unwrapped = child_error(e)
            if unwrapped is e:
                raise
            raise unwrapped from e


@dataclass
class Split:
    dataset: CocoDetection
    images_dir: Path
    ann_file: Path
    layout: str = "coco"

    @property
    def is_lvis(self) -> bool:
        cats = list(self.dataset.coco.cats.values())
        return (bool(cats) and "frequency" in cats[0]) or "lvis" in self.ann_file.name.lower()


def load_split(spec: str | DataSource, split: str, cfg: Config, train: bool, category_map: CategoryMap | None = None,
               skip_image_ids=()) -> Split:
    """The dataset of ``split`` with the run's transforms; ``spec`` as ``data.train`` takes it, or a
    source already resolved (``resolve_splits``)."""
    source = spec if isinstance(spec, DataSource) else locate(spec, split)
    d = cfg.data
    if train:
        tf = build_transforms(True, scales=d.train_scales, max_size=d.max_size,
                              crop=crop_for_scales(d.train_scales) if d.crop else None, flips=d.flips,
                              color_jitter=d.color_jitter)
    else:
        tf = eval_transforms(d.val_scale, d.max_size)
    annotations = source.annotations()
    try:
        ds = CocoDetection(source.images_dir, annotations, transforms=tf, category_map=category_map,
                           skip_image_ids=skip_image_ids, name=str(source.ann_file))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{source.ann_file}: cannot read the dataset ({e})") from None
    return Split(ds, source.images_dir, source.ann_file, source.layout)


def train_loader(ds, cfg: Config, info: DistInfo) -> tuple[DataLoader, EpochBatches]:
    t = cfg.train
    sampler = EpochBatches(len(ds), t.batch_size, t.seed, info.rank, info.world_size, shuffle=True, drop_last=True)
    if len(sampler) < t.grad_accum:
        raise UserError(
            f"the training set has {len(ds)} images: too few for {info.world_size} process(es) x "
            f"batch {t.batch_size} x grad_accum {t.grad_accum}"
        )
    loader = Loader(
        SeededSamples(ds),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=t.num_workers,
        worker_init_fn=worker_init,
        generator=torch.Generator().manual_seed(t.seed + info.rank),
        # The batch sampler runs in this process and hands (index, seed) pairs to the workers, so
        # workers can live across epochs and still follow set_epoch().
        persistent_workers=t.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return loader, sampler


def eval_loader(ds, batch_size: int, num_workers: int, info: DistInfo) -> DataLoader:
    sampler = EpochBatches(len(ds), batch_size, 0, info.rank, info.world_size, shuffle=False, drop_last=False)
    return Loader(SeededSamples(ds), batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      worker_init_fn=worker_init, pin_memory=torch.cuda.is_available())
