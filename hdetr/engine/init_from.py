"""``train.init_from``: start a new run from another detector's weights (fine-tuning).

The model is first built as for training from scratch; then every tensor whose name and shape fit is
overwritten from the source. Two kinds of tensor are bridged when their shapes differ:

- class heads (every decoder layer's and the two-stage encoder's): the row (and bias) of each class
  whose name matches a source class (case-insensitively, or through ``train.init_class_map``) is
  copied; the other rows keep their fresh initialisation (the focal prior bias), as a new head's;
- the query embeddings: the first one-to-one rows from the source's one-to-one rows, the one-to-many
  rows from the source's one-to-many rows (or its one-to-one rows, ``train.init_one2many=one2one``);
  rows the source does not have keep their fresh initialisation.

Any other shape difference (hidden size, feature levels, backbone) cannot be bridged: it stops with a
message naming the first mismatching tensor and both shapes. Nothing here draws random numbers, so a
run's random streams are those of the same run from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..weights import LoadedWeights, load_weights
from ..config import Config, parse_parts
from ..data.categories import UNUSED_CLASS_NAME
from ..errors import UserError, quote
from ..files import atomic_write
from ..run_folder import INIT_REPORT
from ..hybrid import query_groups
from ..models import build_model
from ..models.backbone_weights import build_backbone_for_other_weights, build_configured_backbone
from ..models.parts import CLASS_HEAD_PREFIX, QUERY_EMBEDDING, freeze, part_of



def _key(name: str) -> str:
    return name.strip().casefold()


def class_rows(target_names: list[str], source_names: list[str], class_map: dict[str, str],
               where: str) -> list[tuple[int, int]]:
    """(target index, source index) of every class that starts from a source class's row."""
    src_index: dict[str, int] = {}
    for i, n in enumerate(source_names):
        if n != UNUSED_CLASS_NAME:
            src_index.setdefault(_key(n), i)
    targets = {_key(n) for n in target_names}
    explicit = {_key(k): _key(v) for k, v in class_map.items()}
    for mine, theirs in explicit.items():
        if mine not in targets:
            raise UserError(f"train.init_class_map: {quote(mine)} is not a class of the training data "
                            f"(classes: {', '.join(n for n in target_names if n != UNUSED_CLASS_NAME)})")
        if theirs not in src_index:
            raise UserError(f"train.init_class_map: {quote(theirs)} is not a class of {where} "
                            f"(e.g. {', '.join(n for n in source_names if n != UNUSED_CLASS_NAME)[:200]})")
    rows = []
    for j, n in enumerate(target_names):
        if n == UNUSED_CLASS_NAME:
            continue
        i = src_index.get(explicit.get(_key(n), _key(n)))
        if i is not None:
            rows.append((j, i))
    return rows


def _mismatch(source: Path, name: str, theirs, mine) -> UserError:
    return UserError(
        f"train.init_from={source}: cannot initialise this model from it: {name} has shape {list(theirs)} "
        f"there and {list(mine)} here (a different hidden size, number of feature levels, layer size or "
        f"backbone). Use a source of the same architecture, or load only the parts that fit with "
        f"train.init_parts (e.g. train.init_parts=backbone)")


def _query_rows(cfg: Config, src_cfg: Config, n_src: int, one2many: str) -> list[tuple[int, int]]:
    """(target row, source row) pairs of the query embedding (one-to-one group first, then one-to-many)."""
    t_o2o, t_o2m = cfg.model.num_queries, query_groups(cfg).one2many
    s_o2o = min(src_cfg.model.num_queries, n_src)
    s_o2m = n_src - s_o2o
    pairs = [(r, r) for r in range(min(t_o2o, s_o2o))]
    if one2many == "one2one" and s_o2o:
        pairs += [(t_o2o + r, r % s_o2o) for r in range(t_o2m)]
    else:
        pairs += [(t_o2o + r, s_o2o + r) for r in range(min(t_o2m, s_o2m))]
    return pairs


@torch.no_grad()
def init_from(model: nn.Module, cfg: Config, class_names: list[str], loaded: LoadedWeights | None = None) -> dict:
    """Initialise ``model`` (built for ``cfg``, classes ``class_names``) from ``cfg.train.init_from``.

    Returns the report: every tensor of the model is ``loaded``, ``partly_copied`` or ``reinitialised``,
    every tensor of the source is used (loaded or partly copied) or ``unused``.

    Kept whole: one pass over the model's tensors decides each one's fate and fills the report as it goes.
    """
    t = cfg.train
    loaded = loaded or load_weights(t.init_from)
    source, src, src_cfg = loaded.source, loaded.state, loaded.cfg
    parts = parse_parts(t.init_parts, "train.init_parts", allow_all=True)
    mine = model.state_dict()
    if "backbone" in parts:
        # Backbones of other kinds share no tensor names: some of each side's are missing on the other.
        missing = [k for k in mine if part_of(k) == "backbone" and k not in src]
        extra = [k for k in src if part_of(k) == "backbone" and k not in mine]
        if missing and extra:
            raise UserError(
                f"train.init_from={source}: its backbone is {src_cfg.model.backbone}, this model's is "
                f"{cfg.model.backbone}: {missing[0]} {list(mine[missing[0]].shape)} is not there, {extra[0]} "
                f"{list(src[extra[0]].shape)} is not here; use train.init_parts=encoder+decoder+heads to leave "
                f"the backbone out")

    names_known = bool(loaded.class_names) and bool(class_names)
    rows = class_rows(class_names, loaded.class_names, t.init_class_map, str(source)) if names_known else []
    same_classes = names_known and len(class_names) == len(loaded.class_names) and rows == [
        (j, j) for j, n in enumerate(class_names) if n != UNUSED_CLASS_NAME]
    used: set[str] = set()
    report: dict = {"source": str(source), "source_kind": loaded.kind, "ema_weights": loaded.ema,
                    "init_parts": list(parts), "loaded": [], "partly_copied": [], "reinitialised": [], "unused": []}

    for name, value in mine.items():
        part = part_of(name)
        if part not in parts:
            report["reinitialised"].append({"name": name, "reason": "not in train.init_parts"})
            continue
        if name not in src:
            report["reinitialised"].append({"name": name, "reason": "not in the source"})
            continue
        theirs = src[name]
        used.add(name)
        if name.startswith(CLASS_HEAD_PREFIX) and not same_classes:
            if theirs.shape[1:] != value.shape[1:]:
                raise _mismatch(source, name, theirs.shape, value.shape)
            if rows:
                j, i = (torch.tensor(x) for x in zip(*rows))
                value[j] = theirs[i].to(value)
            report["partly_copied"].append({"name": name, "source_shape": list(theirs.shape),
                                            "shape": list(value.shape), "rows_copied": len(rows)})
        elif name == QUERY_EMBEDDING and (theirs.shape != value.shape or t.init_one2many == "one2one"
                                          or src_cfg.model.num_queries != cfg.model.num_queries):
            if theirs.shape[1:] != value.shape[1:]:
                raise _mismatch(source, name, theirs.shape, value.shape)
            pairs = _query_rows(cfg, src_cfg, theirs.shape[0], t.init_one2many)
            if pairs:
                j, i = (torch.tensor(x) for x in zip(*pairs))
                value[j] = theirs[i].to(value)
            report["partly_copied"].append({"name": name, "source_shape": list(theirs.shape),
                                            "shape": list(value.shape), "rows_copied": len(pairs),
                                            "one2many_from": t.init_one2many})
        elif theirs.shape != value.shape:
            raise _mismatch(source, name, theirs.shape, value.shape)
        else:
            value.copy_(theirs)
            report["loaded"].append(name)
    for name in src:
        if name not in used:
            reason = ("not in train.init_parts" if name in mine else "no such tensor in this model")
            report["unused"].append({"name": name, "reason": reason})

    report["classes"] = {
        "kept": [{"class": class_names[j], "from": loaded.class_names[i], "index": j, "source_index": i}
                 for j, i in rows],
        "new": [n for j, n in enumerate(class_names) if n != UNUSED_CLASS_NAME and j not in {r[0] for r in rows}],
        "source_classes": len(loaded.class_names),
        "note": None if names_known else "class names unknown on one side: class heads start fresh",
    }
    report["counts"] = {"loaded": len(report["loaded"]), "partly_copied": len(report["partly_copied"]),
                        "reinitialised": len(report["reinitialised"]), "unused": len(report["unused"]),
                        "model_tensors": len(mine), "source_tensors": len(src)}
    return report


def summary(report: dict) -> str:
    c, k = report["counts"], report["classes"]
    kept = ", ".join(f"{e['class']}<-{e['from']}" if _key(e["class"]) != _key(e["from"]) else e["class"]
                     for e in k["kept"][:10])
    more = f" and {len(k['kept']) - 10} more" if len(k["kept"]) > 10 else ""
    lines = [f"init_from {report['source']} ({report['source_kind']}{', EMA weights' if report['ema_weights'] else ''}): "
             f"{c['loaded']} tensors loaded, {c['partly_copied']} partly copied, {c['reinitialised']} re-initialised "
             f"(of {c['model_tensors']}); {c['unused']} of the source's {c['source_tensors']} unused",
             f"  classes kept from the source: {len(k['kept'])} ({kept}{more}); new: {len(k['new'])}"
             + (f" ({', '.join(k['new'][:10])})" if k["new"] else "")]
    if k["note"]:
        lines.append(f"  note: {k['note']}")
    return "\n".join(lines)


def load_init_source(cfg: Config, resume: bool) -> LoadedWeights | None:
    """The weights ``train.init_from`` names, for a new run; None when resuming (a resumed run loads
    its own checkpoint and never reads the source again) or when it is not set."""
    return load_weights(cfg.train.init_from) if cfg.train.init_from and not resume else None


def build_model_for_source(cfg: Config, source: LoadedWeights | None, log=print) -> nn.Module:
    """The model a new run starts from, before ``prepare_model``: ``build_model(cfg)``, except that the
    backbone's ImageNet weights (``model.pretrained_backbone``'s download, ``model.backbone_weights``'
    file) are not fetched when ``source`` holds every backbone tensor and ``train.init_parts`` takes
    them: ``init_from`` would overwrite them all (and the download fails offline). The stem is frozen
    as the ImageNet weights freeze it, so the run trains the same parameters."""
    m = cfg.model
    if (source is None or not (m.pretrained_backbone or m.backbone_weights)
            or "backbone" not in parse_parts(cfg.train.init_parts, "train.init_parts", allow_all=True)):
        return build_model(cfg)
    model = build_model(cfg, backbone=build_backbone_for_other_weights(m))
    src = source.state
    uncovered = [k for k, v in model.state_dict().items()
                 if part_of(k) == "backbone" and (k not in src or tuple(src[k].shape) != tuple(v.shape))]
    if uncovered:  # init_from would keep some of the backbone: it gets its ImageNet weights after all
        with torch.random.fork_rng(devices=[]):  # the random streams stay those of a plain build
            imagenet = build_configured_backbone(m)
        model.backbone.load_state_dict(imagenet.state_dict())
        return model
    what = f"model.backbone_weights={m.backbone_weights}" if m.backbone_weights else "model.pretrained_backbone=true"
    log(f"{what}: not loaded, train.init_from={cfg.train.init_from} provides the whole backbone")
    return model


def prepare_model(model: nn.Module, cfg: Config, class_names: list[str], source: LoadedWeights | None) -> dict | None:
    """What a run does to a freshly built model before the optimizer sees it: initialise it from
    ``source`` (``load_init_source``) and freeze ``train.freeze``."""
    report = init_from(model, cfg, class_names, source) if source is not None else None
    frozen = freeze(model, parse_parts(cfg.train.freeze, "train.freeze"))
    if report is not None:
        report["frozen"] = {"parts": cfg.train.freeze, "parameters": len(frozen)}
    return report


def save_report(out_dir: Path, report: dict) -> Path:
    path = Path(out_dir) / INIT_REPORT
    text = json.dumps(report, indent=1) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))
    return path
