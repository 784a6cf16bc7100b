"""List the official detectors usable by name: hdetr models [--urls] [--download NAME ...].

The model zoo: every COCO detector released with the official H-Deformable-DETR implementation, with the
box AP (COCO val2017) the official README gives. A name works wherever a model path does (predict, eval,
export, serve, train.init_from, Detector.from_pretrained): the first use downloads the official file into
the cache ($HDETR_HOME, else $XDG_CACHE_HOME/hdetr, else ~/.cache/hdetr), checks and converts it once.
"""

from __future__ import annotations

BACKBONE_ORDER = ("resnet50", "swin_tiny", "swin_large")


def add_arguments(p):
    p.add_argument("--urls", action="store_true", help="print each name with the URL of its official file")
    p.add_argument("--download", nargs="+", metavar="NAME", default=None,
                   help="download and convert these now (e.g. before going offline); prints their folders")


def run(args) -> int:
    from ..model_zoo import ZOO, cached, get_entry, zoo_home, zoo_url

    if args.download:
        from ..weights.zoo import model_folder  # torch: only to download and convert

        entries = [get_entry(name) for name in args.download]  # every name checked before any download
        for entry in entries:
            print(f"{entry.name}: {model_folder(entry.name)}")
        return 0
    entries = sorted(ZOO.values(), key=lambda e: (BACKBONE_ORDER.index(e.backbone), e.epochs, e.ap))
    if args.urls:
        for e in entries:
            print(f"{e.name}  {zoo_url(e)}")
        return 0
    width = max(len(e.name) for e in entries)
    print(f"{'name':{width}}  {'AP':>4}  cached  {'description'}")
    for e in entries:
        print(f"{e.name:{width}}  {e.ap:4.1f}  {'yes' if cached(e.name) else '':6}  {e.description}")
    print(f"\nAP: box AP on COCO val2017 as the official README gives it. Cache: {zoo_home()}\n"
          "Use a name wherever a model path goes, e.g. hdetr predict r50_hybrid_branch_36ep photo.jpg")
    return 0
