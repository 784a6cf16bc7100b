"""The ablation's results: mean curves over seeds, the summary document, its table and its plot."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from .ablation_setup import Budget, SCHEMES
from .ablation_runs import run_curve, run_s_per_iter

# -- aggregation -------------------------------------------------------------------------------------
def mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def mean_curve(results: list[dict], clock: str) -> list[list[float]]:
    """[iteration, training seconds, AP] averaged over seeds, at the iterations every seed evaluated."""
    per_seed = [{int(p[0]): p for p in run_curve(r, clock)} for r in results]
    common = sorted(set.intersection(*(set(c) for c in per_seed))) if per_seed else []
    return [[it, statistics.fmean(c[it][1] for c in per_seed), statistics.fmean(c[it][2] for c in per_seed)]
            for it in common]


def interpolate(curve: list[list[float]], seconds: float) -> float:
    """AP of a [iteration, seconds, AP] curve at ``seconds`` (linear between evaluations; NaN outside)."""
    pts = [(p[1], p[2]) for p in curve]
    if not pts or seconds < pts[0][0] - 1e-9 or seconds > pts[-1][0] + 1e-9:
        return math.nan
    for (s0, a0), (s1, a1) in zip(pts, pts[1:]):
        if s0 <= seconds <= s1:
            return a0 if s1 == s0 else a0 + (a1 - a0) * (seconds - s0) / (s1 - s0)
    return pts[-1][1]


def machine_description(device: str, threads: int, jobs: int) -> str:
    import torch

    from .machine import describe, one_line

    desc = one_line(describe())
    if device.startswith("cuda"):
        desc += f", {torch.cuda.get_device_name(0)}"
    else:
        desc += f", CPU training: {threads} thread(s) per run, {jobs} run(s) at a time"
    return desc


def aggregate(results: dict[str, list[dict]], infer: dict[str, float], gflops: dict[str, float],
              config: dict, machine: str, clock: str) -> dict:
    schemes = {}
    for name in SCHEMES:
        rs = results.get(name) or []
        if not rs:
            continue
        schemes[name] = {
            "AP": [r["AP"] for r in rs],
            "AP50": [r["AP50"] for r in rs],
            "AP75": [r["AP75"] for r in rs],
            "curve": mean_curve(rs, clock),
            "train_s_per_iter": statistics.fmean(run_s_per_iter(r, clock) for r in rs),
            "peak_mem_mb": statistics.fmean(r["peak_mem_mb"] for r in rs),
            "infer_img_per_s": infer.get(name, math.nan),
            "gflops": gflops.get(name, math.nan),
        }
    return {"schemes": schemes, "config": config, "machine": machine}


def equal_time_seconds(doc: dict) -> float:
    """The longest training time every scheme reached (usually the baseline's whole run)."""
    ends = [s["curve"][-1][1] for s in doc["schemes"].values() if s["curve"]]
    return min(ends) if ends else math.nan


def format_table(doc: dict) -> str:
    """The paper's columns: AP (mean +- std over seeds) at equal iterations, AP at equal training time,
    training time per iteration, peak memory, inference speed and GFLOPs."""
    cfg = doc.get("config", {})
    budget = cfg.get("budget", {})
    t_eq = equal_time_seconds(doc)
    base = doc["schemes"].get("baseline")
    rows = []
    head = (f"{'scheme':<22} {'queries':>9} {'AP':>13} {'AP50':>13} {'AP75':>13} {'AP@' + format(t_eq, '.0f') + 's':>8} "
            f"{'s/iter':>7} {'x base':>6} {'x base*':>7} {'peak MB':>8} {'img/s':>7} {'GFLOPs':>6}")
    rows.append(head)
    rows.append("-" * len(head))
    for name, s in doc["schemes"].items():
        q = cfg.get("queries", {}).get(name)
        qs = f"{q[0]}/{q[1]}" if q else "?"

        def ms(key):
            m, sd = mean_std(s[key])
            return f"{m:.3f}±{sd:.3f}"

        ratio = s["train_s_per_iter"] / base["train_s_per_iter"] if base else math.nan
        side = cfg.get("train_s_per_iter_side_by_side", {})
        ratio_side = side[name] / side["baseline"] if name in side and "baseline" in side else math.nan
        rows.append(f"{name:<22} {qs:>9} {ms('AP'):>13} {ms('AP50'):>13} {ms('AP75'):>13} "
                    f"{interpolate(s['curve'], t_eq):>8.3f} {s['train_s_per_iter']:>7.3f} {ratio:>6.2f} {ratio_side:>7.2f} "
                    f"{s['peak_mem_mb']:>8.0f} {s['infer_img_per_s']:>7.1f} {s['gflops']:>6.2f}")
    seeds = max((len(s["AP"]) for s in doc["schemes"].values()), default=0)
    its = max((s["curve"][-1][0] for s in doc["schemes"].values() if s["curve"]), default=0)
    rows.append(f"AP/AP50/AP75: final, mean±std over {seeds} seed(s), after {its} iterations "
                f"({budget.get('epochs', '?')} epochs); AP@{t_eq:.0f}s: AP of the mean curve after {t_eq:.0f} s "
                f"of training; s/iter and x base: the runs' training time per iteration; x base*: the same "
                f"ratio timed side by side; queries: train/inference")
    return "\n".join(rows)


COLOURS = {"baseline": "tab:gray", "baseline_more_queries": "tab:brown", "branch": "tab:red",
           "epoch": "tab:blue", "layer": "tab:green"}


def plot_marks(budget: Budget, iters_per_epoch: int, schemes) -> dict[str, int]:
    """Vertical lines for the iteration axis: the lr drop, and the epoch scheme's switch when it is plotted."""
    from hdetr.hybrid import one2many_epoch_count

    marks = {"lr x0.1": budget.lr_drop * iters_per_epoch}
    if "epoch" in schemes:
        marks["epoch scheme: one-to-one from here"] = one2many_epoch_count(budget.epochs, budget.epoch_ratio) * iters_per_epoch
    return marks


def plot(results: dict[str, list[dict]], path: Path, title: str, clock: str,
         marks: dict[str, int] | None = None) -> None:
    """AP against iterations and against training seconds; mean over seeds with a +-std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name in SCHEMES:
        rs = results.get(name) or []
        if not rs:
            continue
        per_seed = [{int(p[0]): p for p in run_curve(r, clock)} for r in rs]
        its = sorted(set.intersection(*(set(c) for c in per_seed)))
        if not its:
            continue
        ap = np.array([[c[i][2] for i in its] for c in per_seed])
        secs = np.array([[c[i][1] for i in its] for c in per_seed]).mean(0)
        m, sd = ap.mean(0), ap.std(0, ddof=1) if len(rs) > 1 else np.zeros(len(its))
        for ax, x in ((axes[0], np.array(its)), (axes[1], secs)):
            ax.plot(x, m, marker="o", markersize=3, color=COLOURS[name],
                    label=f"{name} ({len(rs)} seed{'s' if len(rs) > 1 else ''})")
            ax.fill_between(x, m - sd, m + sd, color=COLOURS[name], alpha=0.15, linewidth=0)
    for i, (label, it) in enumerate((marks or {}).items()):
        axes[0].axvline(it, color="k", linestyle=":" if i else "--", linewidth=0.8)
        axes[0].annotate(label, (it, 1), xycoords=("data", "axes fraction"), xytext=(-3, -3 - 10 * i),
                         textcoords="offset points", ha="right", va="top", fontsize=7)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel(f"training {'CPU ' if clock == 'cpu' else ''}seconds (mean over seeds; evaluation excluded)")
    axes[0].set_ylabel("val AP")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")  # the curves rise to the upper right
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
