"""Collect `bench compare` folders into one screening table: each folder one lever (its own ``--set``),
usually one arm, run side by side at one budget. Writes OUT (JSON: every run's end, best and curve, and the
folders' overrides) and prints one line per run; docs/benchmarks.md's screening tables come from it.

    python -m benchmarks.compare_screen OUT.json runs/ref runs/lrb1e-4 ... --what TEXT --command TEXT --code TEXT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CURVE_KEYS = ("cpu_s", "epoch", "AP", "AP50")
RUN_KEYS = ("AP", "AP50", "best_AP50", "steps", "epochs", "cpu_seconds")


def _report(folder: Path) -> dict:
    path = folder / "compare.json"
    try:
        report = json.loads(path.read_text())
        report["arms"].items()
        return report
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror}); give folders that bench compare wrote") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: not a bench compare report (JSON with an 'arms' mapping)") from None


def _is_screen(path: Path) -> bool:
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(table, dict) and {"what", "runs", "data_choices"} <= table.keys()


def collect(folders: list[Path], what: str, command: str, code: str) -> dict:
    """One entry per run of every folder, named by the folder, with the folder's ``--set`` overrides."""
    runs, first = [], None
    for folder in folders:
        report = _report(folder)
        first = first or report
        try:
            runs += [{"name": folder.name, "arm": arm, "set": report.get("overrides", []),
                      **{k: run[k] for k in RUN_KEYS},
                      "curve": [{k: p[k] for k in CURVE_KEYS if k in p} for p in run["curve"]]}
                     for arm, result in report["arms"].items() for run in result["runs"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{folder / 'compare.json'}: a run lacks {e}; was it written by bench compare?") from None
    return {"what": what, "command": command, "code": code, "runs": runs, "machine": first["machine"],
            "val_images": first["val_images"], "data_choices": first["data_choices"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_screen", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the JSON file to write")
    p.add_argument("folders", type=Path, nargs="+", help="--out folders of bench compare, one per lever")
    p.add_argument("--what", default="", help="what the runs are, for the reader of the JSON")
    p.add_argument("--command", default="", help="the bench compare command the runs share")
    p.add_argument("--code", default="", help="the commit the runs measured")
    args = p.parse_args(argv)
    if args.out.exists() and not _is_screen(args.out):
        print(f"error: {args.out}: exists and is not a screening table written by this command; "
              "choose another file", file=sys.stderr)
        return 2
    try:
        table = collect(args.folders, args.what, args.command, args.code)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(table, indent=1))
    for r in table["runs"]:
        print(f"{r['name']:22s} {r['arm']:9s} AP50 {r['AP50']:.3f} best {r['best_AP50']:.3f} AP {r['AP']:.3f} "
              f"steps {r['steps']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
