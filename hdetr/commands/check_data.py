"""Check a dataset before training: layout, counts, objects per image, boxes per class, problems by kind.

Reads DATA (a folder in COCO 2017, Roboflow, LVIS, COCO JSON + images/, YOLO or Pascal VOC layout, or
LAYOUT:FOLDER, an annotations .json, IMAGES_DIR:ANNOTATIONS.json, a YOLO data.yaml: the spec train and
eval take), opens and decodes every image, and prints what training would see: the layout detected,
fatal errors (bad JSON or label files, dangling or duplicate ids, unknown categories, missing/corrupt
images, paths leaving the images folder, wrong image sizes), the box repairs training applies (clipped /
dropped boxes, counted) and warnings, e.g. images with more objects than the one-to-one queries of the
model. ``--config PRESET [overrides]``: the config that would train (as given to ``hdetr train``); the
report ends with its one-to-one queries and the top-k it keeps for this data's classes; with ``small_data``,
after the settings that ``hdetr train small_data`` would choose from this data (``--no-recipe``: the
preset's own). Exit status: 0
usable, 1 fatal problems found, 2 usage error.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def add_arguments(p):
    p.add_argument("data", help="dataset folder, LAYOUT:FOLDER, annotations .json, IMAGES_DIR:ANNOTATIONS.json "
                   "or YOLO data.yaml")
    p.add_argument("--split", default="train", choices=["train", "val", "valid", "test"],
                   help="split to check (default: train)")
    p.add_argument("--config", default=None, help="preset or YAML config that would train on this data: its "
                   "model.num_queries is compared with the objects per image (default: the built-in defaults, "
                   "300 queries)")
    p.add_argument("overrides", nargs="*", help="config overrides, as for hdetr train, e.g. model.num_queries=100")
    p.add_argument("--no-recipe", action="store_true",
                   help="--config small_data: keep the preset's values instead of the ones chosen from the data")
    p.add_argument("--json", type=Path, default=None, metavar="REPORT.json", help="also write the report as JSON")
    p.add_argument("--fix-report", action="store_true",
                   help="list every repair (each clipped or dropped box, before -> after), not only a few examples")
    p.add_argument("--no-images", action="store_true", help="check the annotation file only, do not open the images")
    p.add_argument("--workers", type=int, default=None, help="threads decoding images (default: up to 8)")


def training_model(cfg, config_name: str | None, report) -> dict:
    """The queries and top-k that training ``cfg`` on this data would use (its class count from the data)."""
    from dataclasses import replace

    from ..config import cap_topk
    from ..data.categories import CategoryMap

    m = cfg.model
    try:
        cats = [{"id": c, "name": n} for c, n in report.category_names.items()]
        classes = CategoryMap.from_categories(cats).num_classes if cats else m.num_classes
    except (ValueError, TypeError):  # the categories are broken: the report above says how
        classes = m.num_classes
    capped, note = cap_topk(replace(cfg, model=replace(m, num_classes=classes)))
    return {"config": config_name, "num_queries": m.num_queries, "num_classes": classes,
            "topk": capped.model.topk, "note": note}


def _with_data_choices(args) -> tuple[list[str], list]:
    """The overrides and, for ``--config small_data``, the settings ``hdetr train small_data`` would choose
    from this data, under the user's own (hdetr.data.recipe): the queries compared with the objects per
    image are then the ones training would use."""
    from ..config import ConfigError
    from ..data.recipe import config_overrides

    try:
        items, chosen = config_overrides(args.config, [f"data.train={args.data}", *args.overrides], args.no_recipe)
    except (ConfigError, UserError, OSError, ValueError):  # unreadable data: the check below names the problem
        return list(args.overrides), []
    return (items, chosen) if chosen else (list(args.overrides), [])


def model_line(model: dict) -> str:
    name = model["config"] or "built-in defaults; pass --config PRESET for the one you train"
    line = (f"model ({name}): {model['num_queries']} one-to-one queries, {model['num_classes']} classes, "
            f"topk {model['topk']}")
    return line + (f" ({model['note']})" if model["note"] else "")


def run(args) -> int:
    from ..config import ConfigError, load_config
    from ..data.layouts import resolve_source
    from ..cli import terminal_safe
    from ..data.validate import DEFAULT_MAX_EXAMPLES, validate_source
    from ..outputs import check_output_file, check_writable, json_with, refuse_input_path

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    try:
        cfg = load_config(args.config, args.overrides)  # a bad override is named before the data is read
        items, chosen = _with_data_choices(args)
        cfg = load_config(args.config, items) if chosen else cfg
    except ConfigError as e:
        raise UserError(str(e)) from None
    source = resolve_source(args.data, args.split)
    if args.json:
        check_output_file(args.json, "--json", json_with("num_images"))
        refuse_input_path(args.json, [source.ann_file, source.images_dir], "--json")
        check_writable(args.json, "--json", folder=False)
    from ..files import atomic_write

    report = validate_source(
        source, check_images=not args.no_images, workers=args.workers,
        max_examples=None if args.fix_report else DEFAULT_MAX_EXAMPLES, num_queries=cfg.model.num_queries,
    )
    print(terminal_safe(report.format()))
    for c in chosen:
        print(terminal_safe(f"data chose {c.key}={c.value}: {c.why}"))
    model = training_model(cfg, args.config, report)
    if chosen:
        model["data_choices"] = [{"key": c.key, "value": c.value, "why": c.why} for c in chosen]
    print(model_line(model))
    if args.json:
        try:
            doc = {**report.to_dict(), "model": model}
            text = json.dumps(doc, indent=2, default=str) + "\n"
            atomic_write(args.json, lambda p: Path(p).write_text(text))
        except OSError as e:
            raise UserError(f"{args.json}: cannot write the report ({e.strerror or e})") from None
        print(f"report written to {args.json}")
    return 0 if report.ok else 1
