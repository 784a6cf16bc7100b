"""Training losses of the ablation's runs, side by side: where a scheme's one-to-one queries stand.

    python benchmarks/ablation_losses.py runs/bench/ablation/KEY [--seed 0] [--out benchmarks/results/ablation_paper_losses.json]

Reads each run's metrics.jsonl (the engine's log windows) under KEY/SCHEME/seedN and prints, for the
last log window of each third of training, the one-to-one loss terms of the final decoder layer
(focal class, L1, GIoU: what inference uses), the same class loss of every decoder layer, and the
encoder proposals' class loss. For the baselines and the branch (whose one-to-many group logs under
other names) these are one-to-one losses, comparable across schemes: they tell whether the branch's
one-to-one queries learn more slowly than the baseline's. The epoch scheme logs its one-to-many losses
under the same names during its one-to-many epochs, and the layer scheme its first L1 layers', so
those rows are not one-to-one figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FINAL = ("loss_ce", "loss_bbox", "loss_giou")


def windows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    try:
        with open(path) as f:
            return [r for r in map(json.loads, f) if "losses" in r]
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: line {e.lineno}: not a JSON record ({e.msg})") from None


def layer_count(losses: dict) -> int:
    return sum(1 for k in losses if k.startswith("loss_ce_") and k[8:].isdigit()) + 1


def summary(records: list[dict]) -> list[dict]:
    """The last window of each third of training: step, final-layer one-to-one terms, class loss per layer."""
    if not records:
        return []
    last = records[-1]["step"]
    out = []
    for third in (1, 2, 3):
        upto = [r for r in records if r["step"] <= last * third / 3]
        r = upto[-1] if upto else records[0]
        losses = r["losses"]
        n = layer_count(losses)
        per_layer = [losses.get(f"loss_ce_{i}") for i in range(n - 1)] + [losses["loss_ce"]]
        out.append({"step": r["step"], **{k: losses[k] for k in FINAL},
                    "loss_ce_per_layer": per_layer, "loss_ce_enc": losses.get("loss_ce_enc")})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, help="the ablation's run folder for one budget (runs/bench/ablation/KEY)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = p.parse_args()
    if not args.runs.is_dir():
        raise SystemExit(f"{args.runs}: not a folder (give the ablation's run folder of one budget, runs/bench/ablation/KEY)")
    result = {}
    for scheme_dir in sorted(d for d in args.runs.iterdir() if (d / f"seed{args.seed}" / "metrics.jsonl").exists()):
        result[scheme_dir.name] = summary(windows(scheme_dir / f"seed{args.seed}"))
    if not result:
        raise SystemExit(f"{args.runs}: no run folder with seed{args.seed}/metrics.jsonl")
    print(f"one-to-one losses, seed {args.seed} (last log window of each third of training)")
    print(f"{'scheme':24s}{'step':>6s}{'ce':>8s}{'L1':>8s}{'GIoU':>8s}  class loss per decoder layer (first ... last)   enc")
    for scheme, rows in result.items():
        for r in rows:
            layers = " ".join(f"{v:.3f}" for v in r["loss_ce_per_layer"])
            enc = f"{r['loss_ce_enc']:.3f}" if r["loss_ce_enc"] is not None else "-"
            print(f"{scheme:24s}{r['step']:6d}{r['loss_ce']:8.3f}{r['loss_bbox']:8.3f}{r['loss_giou']:8.3f}  {layers}   {enc}")
    if args.out:
        args.out.write_text(json.dumps({"seed": args.seed, "runs": str(args.runs), "schemes": result}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
