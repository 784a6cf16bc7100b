"""The ``hdetr`` command line: one verb per module in ``hdetr.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> module in hdetr.commands exposing ``add_arguments(parser)`` and ``run(args) -> int``.
VERBS = {
    "convert": "convert",
    "check-data": "check_data",
    "convert-data": "convert_data",
    "export": "export",
    "bench": "bench",
    "train": "train",
    "eval": "eval",
    "predict": "predict",
    "synth": "synth",
    "demo": "demo",
    "serve": "serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hdetr", description="DETR detectors with hybrid matching (H-DETR).")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module_name in VERBS.items():
        module = importlib.import_module(f"hdetr.commands.{module_name}")
        p = sub.add_parser(verb, help=module.__doc__.strip().splitlines()[0], description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import Interrupted, UserError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse stops filling a nargs="*" positional at the first option; key=value overrides given
        # after options (hdetr train CONFIG --out DIR train.lr=1e-4) still belong to it.
        if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args._module.run(args) or 0)
    except UserError as e:
        print(f"hdetr {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"hdetr {args.verb}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"hdetr {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
