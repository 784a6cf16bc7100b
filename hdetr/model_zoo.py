"""The model zoo's table: every COCO detector released with the official H-Deformable-DETR implementation,
and where its files go (torch-free, so that ``hdetr models`` answers at once; the download, the checks
and the conversion are ``hdetr.weights.zoo``).

Names, files and box AP (COCO val2017) are those of the official README's model zoo
(github.com/HDETR/H-Deformable-DETR, release v0.1). ``preset`` + ``overrides`` is the hdetr config of
the official training script each file comes from ("tricks" = dropout 0, mixed query selection, look
forward twice; without them: dropout 0.1 and neither). One README line is left out: the Swin-L
"deep-encoder" model, which the README lists without a download link.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

OFFICIAL_RELEASE_URL = "https://github.com/HDETR/H-Deformable-DETR/releases/download/v0.1/"

NO_TRICKS = ("model.dropout=0.1", "model.mixed_selection=false", "model.look_forward_twice=false")
BACKBONE_NAMES = {"resnet50": "R50", "swin_tiny": "Swin-T", "swin_large": "Swin-L"}


@dataclass(frozen=True)
class ZooEntry:
    name: str  # what a user types: hdetr predict NAME photo.jpg
    file: str  # the official release file
    preset: str  # hdetr preset of the official training script ...
    overrides: tuple[str, ...]  # ... with these changes
    ap: float  # box AP on COCO val2017, as the official README gives it
    backbone: str
    epochs: int
    tricks: bool
    one2many: int = 0  # one-to-many queries in training (0: one-to-one baseline); stored in the weights
    queries: int = 300  # one-to-one queries
    topk: int = 100  # detections kept per image (the README's "[topk=300]" line reuses a file with 300)

    @property
    def scheme(self) -> str:
        return "branch" if self.one2many else "none"

    @property
    def description(self) -> str:
        what = "H-Deformable-DETR" if self.one2many else "Deformable-DETR"
        extras = [f"{self.queries} queries"] if self.queries != 300 else []
        extras += [o.split(".", 1)[1] for o in self.overrides if o.startswith(("train.weight_decay", "model.topk"))]
        return f"{what}{' + tricks' if self.tricks else ''}, {BACKBONE_NAMES[self.backbone]}, {self.epochs} epochs" + (
            f" ({', '.join(extras)})" if extras else "")


def _entries() -> list[ZooEntry]:
    two_stage = "deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage"
    hybrid = "hybrid_branch_lambda1_group6_t1500"
    out = []

    def add(name, file, preset, ap, backbone, epochs, tricks, overrides=(), **kw):
        overrides = tuple(overrides) + (() if tricks else NO_TRICKS)
        out.append(ZooEntry(name, file, preset, overrides, ap, backbone, epochs, tricks, **kw))

    for ep in (12, 36):
        # ResNet-50
        add(f"r50_baseline_no_tricks_{ep}ep", f"r50_{two_stage}_{ep}eps.pth", f"r50_baseline_{ep}ep",
            {12: 43.7, 36: 46.8}[ep], "resnet50", ep, False)
        add(f"r50_baseline_{ep}ep", f"r50_dp0_mqs_lft_{two_stage}_{ep}eps.pth", f"r50_baseline_{ep}ep",
            {12: 47.0, 36: 49.0}[ep], "resnet50", ep, True)
        add(f"r50_hybrid_branch_{ep}ep", f"r50_{hybrid}_dp0_mqs_lft_{two_stage}_{ep}eps.pth",
            f"r50_hybrid_branch_{ep}ep", {12: 48.7, 36: 50.0}[ep], "resnet50", ep, True, one2many=1500)
        # Swin-T: the README gives two files of each baseline without tricks (two runs)
        for run, suffix in ((1, ""), (2, "_2")):
            add(f"swin_t_baseline_no_tricks_{ep}ep{'' if run == 1 else '_run2'}",
                f"swin_tiny_{two_stage}_{ep}eps{suffix}.pth", f"swin_t_baseline_{ep}ep",
                {(12, 1): 45.3, (12, 2): 46.0, (36, 1): 49.0, (36, 2): 49.6}[ep, run], "swin_tiny", ep, False)
        add(f"swin_t_baseline_{ep}ep", f"swin_tiny_dp0_mqs_lft_{two_stage}_{ep}eps.pth", f"swin_t_baseline_{ep}ep",
            {12: 49.3, 36: 51.8}[ep], "swin_tiny", ep, True)
        add(f"swin_t_hybrid_branch_{ep}ep", f"swin_tiny_{hybrid}_dp0_mqs_lft_{two_stage}_{ep}eps.pth",
            f"swin_t_hybrid_branch_{ep}ep", {12: 50.6, 36: 53.2}[ep], "swin_tiny", ep, True, one2many=1500)
        add(f"swin_t_hybrid_branch_decay0.05_{ep}ep",
            f"decay0.05_swin_tiny_{hybrid}_dp0_mqs_lft_{two_stage}_{ep}eps.pth", f"swin_t_hybrid_branch_{ep}ep",
            {12: 51.2, 36: 53.7}[ep], "swin_tiny", ep, True, ["train.weight_decay=0.05"], one2many=1500)
        # Swin-L: the 36-epoch scripts use drop path 0.5 (in the presets), hence the file names
        dp = "drop_path0.5_" if ep == 36 else ""
        add(f"swin_l_baseline_no_tricks_{ep}ep", f"{dp}swin_large_{two_stage}_{ep}eps.pth", f"swin_l_baseline_{ep}ep",
            {12: 51.0, 36: 53.7}[ep], "swin_large", ep, False)
        add(f"swin_l_baseline_{ep}ep", f"{dp}swin_large_dp0_mqs_lft_{two_stage}_{ep}eps.pth", f"swin_l_baseline_{ep}ep",
            {12: 54.5, 36: 56.3}[ep], "swin_large", ep, True)
        add(f"swin_l_hybrid_branch_{ep}ep", f"{dp}swin_large_{hybrid}_dp0_mqs_lft_{two_stage}_{ep}eps.pth",
            f"swin_l_hybrid_branch_{ep}ep", {12: 55.9, 36: 57.1}[ep], "swin_large", ep, True, one2many=1500)
        add(f"swin_l_hybrid_branch_900q_{ep}ep", f"{dp}swin_large_{hybrid}_n900_dp0_mqs_lft_{two_stage}_{ep}eps.pth",
            f"swin_l_hybrid_branch_{ep}ep", {12: 56.1, 36: 57.4}[ep], "swin_large", ep, True,
            ["model.num_queries=900"], one2many=1500, queries=900)
    n900 = f"swin_large_{hybrid}_n900_dp0_mqs_lft_{two_stage}_36eps.pth"
    add("swin_l_hybrid_branch_900q_36ep_topk300", f"drop_path0.5_{n900}", "swin_l_hybrid_branch_36ep", 57.6,
        "swin_large", 36, True, ["model.num_queries=900", "model.topk=300"], one2many=1500, queries=900, topk=300)
    add("swin_l_hybrid_branch_900q_decay0.05_36ep", f"decay0.05_drop_path0.5_{n900}", "swin_l_hybrid_branch_36ep",
        57.8, "swin_large", 36, True, ["model.num_queries=900", "train.weight_decay=0.05"], one2many=1500, queries=900)
    add("swin_l_hybrid_branch_900q_decay0.05_36ep_topk300", f"decay0.05_drop_path0.5_{n900}",
        "swin_l_hybrid_branch_36ep", 57.9, "swin_large", 36, True,
        ["model.num_queries=900", "train.weight_decay=0.05", "model.topk=300"], one2many=1500, queries=900, topk=300)
    return out


ZOO: dict[str, ZooEntry] = {e.name: e for e in _entries()}


def zoo_home() -> Path:
    """The cache: ``$HDETR_HOME``, else ``$XDG_CACHE_HOME/hdetr``, else ``~/.cache/hdetr``."""
    if os.environ.get("HDETR_HOME"):
        return Path(os.environ["HDETR_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "hdetr"


def zoo_url(entry: ZooEntry) -> str:
    """Where ``entry``'s file is downloaded from: ``$HDETR_ZOO_URL`` (a mirror, the tests' local server)
    or the official release, followed by the official file name."""
    base = os.environ.get("HDETR_ZOO_URL") or OFFICIAL_RELEASE_URL
    return base.rstrip("/") + "/" + entry.file


def is_zoo_name(text: str) -> bool:
    return text in ZOO


def close_names(text: str) -> list[str]:
    """Zoo names that look like ``text`` (for "did you mean" hints)."""
    return difflib.get_close_matches(text, list(ZOO), n=3, cutoff=0.6)


def get_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        near = close_names(name)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise UserError(f"{name!r} is not a model zoo name (hdetr models lists them){hint}")
    return ZOO[name]


def record_file(name: str) -> Path:
    """``NAME.json`` in the cache: the sha256 of the downloaded file and of the converted weights."""
    return zoo_home() / f"{name}.json"


def cached(name: str) -> bool:
    """Whether ``name`` has been converted into the cache (its record holds the converted weights' sha256)."""
    try:
        return bool(json.loads(record_file(name).read_text()).get("converted_sha256"))
    except (OSError, ValueError):
        return False
