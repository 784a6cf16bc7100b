"""The ablation's training runs: one run (in a child process, or in this one), its stored result, and the
pool that runs the pending ones with locks and retries."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from .ablation_setup import PRESET, RUN_SECONDS

# -- one training run (in a child process, or in this one) ------------------------------------------
RESULT_FILE = "result.json"
LOG_FILE = "train.log"


def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def train_run(spec: dict) -> dict:
    """Train one (scheme, seed); write and return its result. Resumes from last.pt if there is one."""
    import torch

    from hdetr.config import load_config
    from hdetr.engine.runlog import read_records
    from hdetr.run_folder import METRICS as METRICS_FILE
    from hdetr.engine.train import LAST, train

    run_dir = Path(spec["run_dir"])
    lock = _try_lock(run_dir)
    if lock is None:
        raise RuntimeError(f"{run_dir} is locked: another process is training this run")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cfg = load_config(PRESET, spec["overrides"])
    device = torch.device(spec["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resumed = (run_dir / LAST).exists()
    start = time.perf_counter()
    result = train(cfg, run_dir, resume=resumed, device=str(device), progress=False)
    wall = time.perf_counter() - start
    evals = [r for r in read_records(run_dir / METRICS_FILE) if "eval" in r]
    if not evals:
        raise RuntimeError(f"{run_dir}: the run recorded no evaluation")
    last = evals[-1]["eval"]
    out = {
        "scheme": spec["scheme"],
        "seed": spec["seed"],
        "budget_key": spec["budget_key"],
        "overrides": spec["overrides"],
        "AP": last["AP"], "AP50": last["AP50"], "AP75": last["AP75"],
        # after every epoch: iterations done, training seconds so far (wall and CPU), val metrics
        "evals": [{"step": r["step"], "train_time": r["train_time"], "train_cpu_time": r["train_cpu_time"],
                   **{k: r["eval"][k] for k in ("AP", "AP50", "AP75")}} for r in evals],
        "steps": result.steps,
        "train_time": result.train_time,
        "train_cpu_time": result.train_cpu_time,
        "peak_mem_mb": _peak_memory_mb(device),
        "wall_s": wall,
        "resumed": resumed,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, run_dir / RESULT_FILE)
    lock.close()
    return out


def _child(spec: dict) -> None:
    """Entry point of a child process: the engine's log lines go to the run's train.log."""
    log = open(Path(spec["run_dir"]) / LOG_FILE, "a", buffering=1)
    sys.stdout = sys.stderr = log
    try:
        train_run(spec)
    except BaseException:
        import traceback

        traceback.print_exc(file=log)
        log.flush()
        raise SystemExit(1)


def read_result(run_dir: Path, budget_key: str) -> dict | None:
    path = run_dir / RESULT_FILE
    if not path.exists():
        return None
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return res if res.get("budget_key") == budget_key and "evals" in res else None


def run_curve(res: dict, clock: str) -> list[list[float]]:
    """[iteration, training seconds by ``clock``, AP] after every epoch of one run."""
    return [[e["step"], e[RUN_SECONDS[clock]], e["AP"]] for e in res["evals"]]


def run_s_per_iter(res: dict, clock: str) -> float:
    return res[RUN_SECONDS[clock]] / max(res["steps"], 1)


RETRIES = 3  # a run whose process was killed by a signal is resumed from its last epoch this many times
LOCK_FILE = ".lock"


def _try_lock(run_dir: Path):
    """An exclusive lock on the run folder (released when its holder exits, however it exits), or None
    when another process holds it: a run left behind by a killed session is still training there."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks: trust that one session runs at a time
        return open(os.devnull)
    f = open(run_dir / LOCK_FILE, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def run_pending(pending: list[dict], jobs: int, log, target=None) -> list[dict]:
    """Run the specs, ``jobs`` child processes at a time (0: in this process). Returns the results in
    the order the runs finished; raises UserError naming the log of a failed run.

    A child killed by a signal (say, by someone else's ``pkill``) is started again and resumes from the
    run's last checkpoint, up to RETRIES times; a run whose folder is locked by a process that outlived
    an earlier session is waited for, not started twice. ``target`` replaces the child's entry point
    (tests). When this process is stopped (SIGTERM, Ctrl-C), its children are stopped too."""
    import multiprocessing as mp
    import threading

    done: list[dict] = []
    if jobs == 0:
        for spec in pending:
            log(f"  training {spec['scheme']} seed {spec['seed']} ...")
            res = train_run(spec)
            done.append(res)
            log(_run_line(res))
        return done
    ctx = mp.get_context("spawn")
    running: list[tuple[object, dict]] = []
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_exit) if main_thread else None
    try:
        return _pool(ctx, pending, jobs, log, done, running, target or _child)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        _stop_children(running, log)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _stop_children(running: list, log) -> None:
    """Children stop with their parent: each gets SIGTERM (the trainer saves a checkpoint at the end of
    the step it is in, so running the command again resumes) instead of training on unseen."""
    alive = [(proc, spec) for proc, spec in running if proc.is_alive()]
    if not alive:
        return
    log(f"  stopping {len(alive)} run(s); running the command again resumes them")
    for proc, _ in alive:
        proc.terminate()
    for proc, _ in alive:
        proc.join(timeout=600)
        if proc.is_alive():
            proc.kill()


def _pool(ctx, pending: list[dict], jobs: int, log, done: list[dict], running: list, target) -> list[dict]:
    from hdetr.errors import UserError

    queue = list(pending)
    failures, retries, waiting = [], {}, set()
    while queue or running:
        for spec in list(queue):
            if len(running) >= jobs:
                break
            run_dir = Path(spec["run_dir"])
            res = read_result(run_dir, spec["budget_key"])
            if res is not None:  # finished by a process of an earlier session
                queue.remove(spec)
                done.append(res)
                log(_run_line(res))
                continue
            lock = _try_lock(run_dir)
            if lock is None:
                if spec["run_dir"] not in waiting:
                    waiting.add(spec["run_dir"])
                    log(f"  {spec['scheme']} seed {spec['seed']}: another process is training it; waiting")
                continue
            lock.close()  # the child takes it
            queue.remove(spec)
            proc = ctx.Process(target=target, args=(spec,), name=f"{spec['scheme']}-seed{spec['seed']}")
            proc.start()
            log(f"  started {spec['scheme']} seed {spec['seed']} (log: {run_dir / LOG_FILE})")
            running.append((proc, spec))
        time.sleep(0.5 if running else 5)
        for proc, spec in list(running):
            if proc.is_alive():
                continue
            proc.join()
            running.remove((proc, spec))
            name = f"{spec['scheme']} seed {spec['seed']}"
            if proc.exitcode != 0:
                n = retries.get(spec["run_dir"], 0)
                if proc.exitcode < 0 and n < RETRIES:  # killed by a signal: resume it
                    retries[spec["run_dir"]] = n + 1
                    log(f"  {name} was killed (signal {-proc.exitcode}); resuming it from its last checkpoint")
                    queue.insert(0, spec)
                    continue
                failures.append(spec)
                log(f"  FAILED {name} (exit code {proc.exitcode}); see {Path(spec['run_dir']) / LOG_FILE}")
                continue
            res = json.loads((Path(spec["run_dir"]) / RESULT_FILE).read_text())
            done.append(res)
            log(_run_line(res))
    if failures:
        names = ", ".join(f"{s['scheme']} seed {s['seed']}" for s in failures)
        raise UserError(f"{len(failures)} run(s) failed: {names}; their logs are in the run folders. "
                        f"Running the command again resumes them.")
    return done


def _run_line(res: dict) -> str:
    curve = " ".join(f"{e['AP']:.3f}" for e in res["evals"])
    return (f"  done {res['scheme']} seed {res['seed']}: AP {res['AP']:.3f} AP50 {res['AP50']:.3f} "
            f"AP75 {res['AP75']:.3f}; training {res['train_time']:.0f} s wall, {res['train_cpu_time']:.0f} s CPU "
            f"({run_s_per_iter(res, 'wall'):.3f} / {run_s_per_iter(res, 'cpu'):.3f} s/iter), "
            f"peak {res['peak_mem_mb']:.0f} MB; AP per epoch: {curve}")
