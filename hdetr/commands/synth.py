"""Write the synthetic shapes dataset (COCO format, Roboflow layout): hdetr synth OUT.

OUT/train and OUT/valid get JPEG images and _annotations.coco.json; the same arguments always give
the same files. Train on it with: hdetr train synthetic_small data.train=OUT
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p):
    from ..data import synthetic

    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--train", type=int, default=synthetic.DEFAULT_NUM_TRAIN, help="training images")
    p.add_argument("--val", type=int, default=synthetic.DEFAULT_NUM_VAL, help="validation images")
    p.add_argument("--size", type=int, default=synthetic.DEFAULT_IMAGE_SIZE, help="image side in pixels")
    p.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED)
    p.add_argument("--palette", choices=synthetic.PALETTES, default="random",
                   help="random: classes differ by shape only; by_class: each class also has its own colour")
    p.add_argument("--style", choices=synthetic.STYLES, default="shapes",
                   help="shapes: 4 flat shapes, 3.4 objects per image; coco_like: COCO's object counts (~7 per "
                        "image, 15%% crowded with 20-30) and sizes, 6 textured shapes on cluttered backgrounds")


def run(args) -> int:
    from ..data.synthetic import write_synthetic_dataset
    from ..errors import UserError

    for name, low, high in (("train", 1, None), ("val", 0, None), ("size", 32, 4096), ("seed", 0, 2**32 - 1)):
        value = getattr(args, name)
        if value < low or (high is not None and value > high):
            raise UserError(f"--{name} must be in [{low}, {high if high is not None else 'inf'}], got {value}")
    try:
        summary = write_synthetic_dataset(args.out, args.train, args.val, args.size, args.seed, palette=args.palette,
                                          style=args.style)
    except ValueError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"{e.filename or args.out}: cannot write the dataset ({e.strerror or e})") from None
    for split in ("train", "valid"):
        s = summary[split]
        print(f"{split}: {s['num_images']} images, {s['num_annotations']} boxes "
              f"({s['objects_per_image']:.1f} per image, {s['images_with_20_or_more']} with 20+) -> {s['ann_file']}")
    return 0
