"""A corpus of user mistakes and faults, generated on the fly, and the classifier of hdetr's answers.

Each case builds its inputs in its own folder, runs one ``hdetr`` command (in-process through
``hdetr.cli.main``; as a subprocess only where the process boundary is the point) and the answer is
classified as one of KINDS. The inputs (and the shared model folder) are hashed before and after:
any change to a file hdetr did not create is ``unsafe``.

    python tests/support/bad_input_corpus.py [--json table.json] [-k SUBSTRING]

prints one line per case and the table of kinds; tests/integration/test_bad_input_corpus.py runs it under pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Not support.paths: this file also runs as a script, with tests/support (not tests/) on sys.path.
ROOT = Path(__file__).resolve().parents[2]

# clear: refused with a message (exit status != 0, no traceback); handled: accepted and right to be
# (valid input, or a warning said what hdetr did); silent: accepted where it should have been refused
# or warned about; wrongly_refused: a valid input refused; unsafe: an input changed, or raw terminal
# escapes printed.
KINDS = ("clear", "handled", "traceback", "hang", "silent", "wrongly_refused", "unsafe")

# Accepted without a word, on purpose (docs/reliability.md says why). id -> reason.
ACCEPTED_BY_DESIGN = {
    "synth-existing-folder": "hdetr synth writes the same files for the same arguments; other files are left alone",
    "data-category-ids-zero-based": "any distinct category ids are allowed; the category map carries them",
}

TINY_TRAIN = [
    "model.enc_layers=1", "model.dec_layers=1", "model.dim_feedforward=64", "model.num_queries=10",
    "model.topk=10", "hybrid.num_queries_one2many=20", "hybrid.k=2", "train.epochs=1", "train.max_iters=1",
    "train.batch_size=2", "train.num_workers=0", "data.train_scales=[64]", "data.val_scale=64", "data.max_size=96",
]

HANG_S = 60


@dataclass
class Case:
    id: str
    area: str
    build: Callable  # (Ctx) -> argv list
    expect: str = "error"  # error | ok | warn | any (clear error or success)
    needs: str = ""  # substring the message must contain (clear errors): the key or file it names
    subprocess: bool = False
    env: dict = field(default_factory=dict)
    check: Callable | None = None  # (Ctx, Result) -> kind or None: an extra verdict
    cleanup: Callable | None = None  # (Ctx) -> None: always run after the case (e.g. unmount what it mounted)


@dataclass
class Result:
    code: int | None
    out: str
    err: str
    exc: str = ""
    seconds: float = 0.0
    hang: bool = False


class Ctx:
    def __init__(self, root: Path, shared: dict):
        self.root = root
        self.inp = root / "in"
        self.out = root / "out"
        self.inp.mkdir(parents=True, exist_ok=True)
        self.shared = shared
        self.extra_protected: list[Path] = []

    def dataset(self, name: str = "ds", **kw) -> Path:
        dst = self.inp / name
        shutil.copytree(self.shared["dataset"], dst)
        return dst

    def model(self) -> Path:
        dst = self.inp / "model"
        shutil.copytree(self.shared["model"], dst)
        return dst

    def ann(self, ds: Path, split: str = "train") -> Path:
        return ds / ("train" if split == "train" else "valid") / "_annotations.coco.json"

    def edit_ann(self, ds: Path, fn, split: str = "train") -> Path:
        p = self.ann(ds, split)
        d = json.loads(p.read_text())
        r = fn(d)
        d = r if isinstance(r, dict) else d
        p.write_text(json.dumps(d))
        return p

    def train(self, *overrides, data: Path | str | None = None, out: Path | None = None, extra=()) -> list[str]:
        ds = data if data is not None else self.dataset()
        return ["train", "synthetic_small", f"data.train={ds}", *TINY_TRAIN, *overrides,
                "--out", str(out or self.out / "run"), "--device", "cpu", "--no-progress", *extra]


# ---------------------------------------------------------------- shared fixtures

def make_shared(base: Path) -> dict:
    """A 4+2 image synthetic dataset and a model folder trained on it for one step (in-process)."""
    from hdetr.cli import main
    from hdetr.data.synthetic import write_synthetic_dataset

    ds = base / "dataset"
    write_synthetic_dataset(ds, 4, 2, 64, 0)
    ctx = Ctx(base / "fixture", {"dataset": ds})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(ctx.train(data=ds, out=base / "run"))
    assert code == 0, "the fixture training failed"
    return {"dataset": ds, "model": base / "run" / "model", "run": base / "run"}


# ---------------------------------------------------------------- running and classifying

def _hashes(paths: list[Path]) -> dict:
    out = {}
    for top in paths:
        if not top.exists() and not top.is_symlink():
            continue
        items = [top] if not top.is_dir() else sorted(top.rglob("*"))
        for p in items:
            try:
                if p.is_symlink():
                    out[str(p)] = "link:" + os.readlink(p)
                elif p.is_fifo():
                    out[str(p)] = "fifo"
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:
                out[str(p)] = "unreadable"
    return out


def _unblock_fifos(root: Path, unblocked: list) -> None:
    for p in root.rglob("*"):
        if p.is_fifo():
            try:
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
                unblocked.append(p)
            except OSError:
                pass


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_case(case: Case, root: Path, shared: dict) -> tuple[str, Result, str]:
    from hdetr.cli import main

    if root.exists():
        shutil.rmtree(root)
    ctx = Ctx(root, shared)
    argv = [str(a) for a in case.build(ctx)]
    protected = [ctx.inp, shared["model"], shared["dataset"], *ctx.extra_protected]
    before = _hashes(protected)
    t0 = time.monotonic()
    # A reader blocked on a FIFO (in any thread) cannot be interrupted: open its other end after the time limit.
    unblocked: list[Path] = []
    timer = threading.Timer(HANG_S - 5, _unblock_fifos, (root, unblocked))
    timer.daemon = True
    timer.start()
    env_old = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    try:
        if case.subprocess:
            env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(ROOT), "OMP_NUM_THREADS": "1"}
            try:
                p = subprocess.run([sys.executable, "-m", "hdetr.cli", *argv], capture_output=True, text=True,
                                   timeout=3 * HANG_S, env=env, cwd=root, stdin=subprocess.DEVNULL)
                res = Result(p.returncode, p.stdout, p.stderr)
            except subprocess.TimeoutExpired as e:
                res = Result(None, str(e.stdout or ""), str(e.stderr or ""), hang=True)
        else:
            out, err = io.StringIO(), io.StringIO()
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(HANG_S)
            cwd = os.getcwd()
            os.chdir(root)
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    try:
                        res = Result(main(argv), "", "")
                    except SystemExit as e:  # argparse
                        res = Result(e.code if isinstance(e.code, int) else 2, "", "")
                    except _Hang:
                        res = Result(None, "", "", hang=True)
                    except BaseException as e:  # noqa: BLE001 - the corpus records what escapes
                        res = Result(None, "", "", exc=f"{type(e).__name__}: {e}")
            finally:
                timer.cancel()
                signal.alarm(0)
                signal.signal(signal.SIGALRM, old)
                os.chdir(cwd)
            res.out, res.err = out.getvalue(), err.getvalue()
    finally:
        for k, v in env_old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    timer.cancel()
    res.seconds = time.monotonic() - t0
    if unblocked:
        res.hang = True
    after = _hashes(protected)
    if case.cleanup is not None:
        case.cleanup(ctx)
    changed = sorted(k for k in before if after.get(k) != before[k])
    kind, why = classify(case, res, changed, str(root))
    if case.check is not None and kind not in ("traceback", "hang", "unsafe"):
        verdict = case.check(ctx, res)
        if verdict:
            kind, why = verdict
    return kind, res, why


def classify(case: Case, res: Result, changed: list[str], root: str = "") -> tuple[str, str]:
    text = res.out + res.err
    # The case's folder is named after the case: a message must name the culprit, not just echo the path.
    named = text.replace(root, "<case>") if root else text
    if res.hang:
        return "hang", f"no answer within {HANG_S} s ({3 * HANG_S} s for a subprocess)"
    if changed:
        return "unsafe", f"changed or deleted: {', '.join(changed[:3])}"
    if "\x1b" in text:
        return "unsafe", "raw terminal escape sequence printed"
    asked = case.env.get("HDETR_DEBUG") == "1"  # the traceback was asked for
    if res.exc or ("Traceback (most recent call last)" in text and not asked) or ": internal error:" in text:
        return "traceback", res.exc or _last_line(res.err)
    if res.code != 0:
        if case.expect == "ok":
            return "wrongly_refused", _last_line(res.err)
        msg = _last_line(res.err) or _last_line(res.out)
        if case.needs and case.needs.lower() not in named.lower():
            return "silent", f"refused without naming {case.needs!r}: {msg}"
        return "clear", msg
    if case.expect in ("ok", "any"):
        return "handled", "accepted"
    if case.expect == "warn" and re.search(r"warning:|\bwarning\b(?!\(s\))|\b[1-9]\d* warning\(s\)", text, re.I):
        return "handled", _grep(text, "warning")
    if case.id in ACCEPTED_BY_DESIGN:
        return "handled", "accepted by design: " + ACCEPTED_BY_DESIGN[case.id]
    return "silent", "accepted (exit 0)"


def _last_line(s: str) -> str:
    lines = [x for x in s.strip().splitlines() if x.strip()]
    return lines[-1][:200] if lines else ""


def _grep(s: str, word: str) -> str:
    return next((x for x in s.splitlines() if word in x.lower()), "")[:200]


# ---------------------------------------------------------------- file makers

def jpeg(path: Path, w: int = 64, h: int = 64, color=(120, 30, 200)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path, "JPEG")
    return path


def one_image_ds(ctx: Ctx, w: int, h: int, bbox, name="img.jpg", cat_name="shape", extra_img=None) -> Path:
    ds = ctx.inp / "single"
    for split in ("train", "valid"):
        jpeg(ds / split / name, w, h)
        img = {"id": 1, "file_name": name, "width": w, "height": h, **(extra_img or {})}
        d = {"images": [img], "categories": [{"id": 1, "name": cat_name}],
             "annotations": [{"id": 1, "image_id": img["id"], "category_id": 1, "bbox": bbox,
                              "area": bbox[2] * bbox[3], "iscrowd": 0}]}
        (ds / split / "_annotations.coco.json").write_text(json.dumps(d))
    return ds


def write_state(path: Path, mutate) -> Path:
    """Copy the fixture model folder to ``path`` with its weights changed by ``mutate(state)``."""
    import torch  # noqa: F401
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = path / "model.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    mutate(state)
    save_file(state, str(src), metadata=meta)
    return path


def onnx_identity(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "not_hdetr", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# ---------------------------------------------------------------- the cases

def _cfg_cases() -> list[Case]:
    bad = {  # override -> the key the message must name
        "model.backbone=resnet5": "model.backbone", "train.weight_decay=-0.5": "weight_decay",
        "data.train_scales=[]": "train_scales", "data.val_scale=0": "val_scale", "data.max_size=0": "max_size",
        "data.train_scales=[0]": "train_scales", "data.train_scales=[-32]": "train_scales",
        "data.train_scales=abc": "train_scales", "train.seed=1180591620717411303424": "seed",
        "train.seed=-1": "seed", "train.lr=-1": "train.lr", "train.lr_backbone=-1e-5": "lr_backbone",
        "train.lr_drop=-1": "lr_drop", "train.lr=nan": "train.lr", "train.lr=inf": "train.lr",
        "train.epochs=0": "epochs", "train.batch_size=1.5": "batch_size", "train.batch_size=true": "batch_size",
        "model.num_queries=0": "num_queries", "model.topk=0": "topk", "hybrid.scheme=foo": "scheme",
        "hybrid.k=0": "hybrid.k", "train.amp=fp8": "amp", "train.ema_decay=1": "ema_decay", "train.ema_warmup=0": "ema_warmup", "data.flips=sideways": "data.flips", "data.color_jitter=1.5": "color_jitter", "model.num_queries=5000": "num_queries", "loss.cls=-1": "loss.cls",
        "loss.focal_alpha=2": "focal_alpha", "train.grad_accum=0": "grad_accum", "model.dropout=1": "dropout",
        "train.lr_linear_proj_mult=-1": "lr_linear_proj_mult", "train.epochs=[1,2]": "epochs",
        "model.backbone_channels=[a]": "backbone_channels", "train.max_iters=-5": "max_iters",
        "data.val_scale=5000": "val_scale", "data.train_scales=[2000]": "train_scales",
        "hybrid.epoch_ratio=1.5": "epoch_ratio", "train.clip_max_norm=-1": "clip_max_norm",
        "train.num_workers=-2": "num_workers", "loss.giou=nan": "loss.giou", "loss.cost_bbox=-2": "cost_bbox",
        "hybrid.lambda_one2many=-1": "lambda_one2many", "train.log_every=0": "log_every",
        "data.skip_bad_images=maybe": "skip_bad_images", "model.attention_impl=gpu": "attention_impl",
        "train.nonfinite=ignore": "nonfinite", "model.hidden_dim=100": "hidden_dim",
        "train=1 train.lr=2e-4": "train", "train.lr.x=1": "train.lr", "a.b.c.d.e.f.g.h=1": "a",
        "model.swin.depths.x=1": "depths", "model=[1,2]": "model", "train.lr=": "train.lr",
        "=5": "=5", "train.lr": "train.lr", "..=1": "..", "train.lr=[[[[[1]]]]]": "train.lr",
        "train.lr=2e-4 train.lr=abc": "train.lr",
    }
    cases = []
    for i, (ov, key) in enumerate(bad.items()):
        # A dataset path that does not exist: the config value must be refused before any data is read.
        cases.append(Case(f"cfg-{i:02d}-{ov[:40]}", "config",
                          lambda c, ov=ov: c.train(*ov.split(), data=c.inp / "no_such_dataset"), needs=key))
    return cases


def _cfg_file_cases() -> list[Case]:
    def cfg_file(text: bytes | str, name="my.yaml"):
        def build(c):
            p = c.inp / name
            p.write_bytes(text if isinstance(text, bytes) else text.encode())
            return ["train", p, f"data.train={c.inp / 'nodata'}", "--out", c.out / "r", "--device", "cpu"]
        return build

    files = {
        "empty": ("", "nodata"), "binary": (bytes(range(256)) * 4, "my.yaml"), "list-top": ("- 1\n- 2\n", "my.yaml"),
        "python-tag": ("model: !!python/object/apply:os.system ['true']\n", "python"),
        "base-missing": ("_base_: nowhere.yaml\n", "nowhere.yaml"), "unknown-section": ("modle: {}\n", "modle"),
        "tabs": ("model:\n\tbackbone: tiny\n", "my.yaml"), "section-list": ("model: [1, 2]\n", "model"),
        "base-int": ("_base_: 5\n", "_base_"), "huge-int": ("train: {seed: 99999999999999999999999999}\n", "seed"),
        "latin1": ("# caf\xe9\nmodel: {backbone: tiny}\n".encode("latin-1"), "my.yaml"),
        "anchors-bomb": ("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                         "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n", "a"),
    }
    cases = [Case(f"cfgfile-{k}", "config", cfg_file(t), needs=n) for k, (t, n) in files.items()]

    def loop(c):
        (c.inp / "a.yaml").write_text("_base_: b.yaml\n")
        (c.inp / "b.yaml").write_text("_base_: a.yaml\n")
        return ["train", c.inp / "a.yaml", "--out", c.out / "r"]

    def is_dir(c):
        (c.inp / "cfg.yaml").mkdir()
        return ["train", c.inp / "cfg.yaml", "--out", c.out / "r"]

    cases += [Case("cfgfile-base-loop", "config", loop, needs="loop"),
              Case("cfgfile-is-folder", "config", is_dir, needs="cfg.yaml"),
              Case("cfg-unknown-preset", "config", lambda c: ["train", "r50_hybird_branch"], needs="preset"),
              Case("cfg-no-data-train", "config", lambda c: ["train", "synthetic_small", "--out", c.out / "r"],
                   needs="data.train")]
    return cases


def _cli_cases() -> list[Case]:
    m = lambda c: c.model()  # noqa: E731
    d = lambda c: c.dataset()  # noqa: E731
    L = [
        ("no-verb", lambda c: [], ""), ("unknown-verb", lambda c: ["trian"], "trian"),
        ("unknown-option", lambda c: c.train(extra=["--epochs", "3"]), "--epochs"),
        ("device-gpu0", lambda c: c.train(extra=["--device", "gpu0"]), "gpu0"),
        ("device-cuda99", lambda c: c.train(extra=["--device", "cuda:99"]), "cuda"),
        ("device-empty", lambda c: c.train(extra=["--device", ""]), "device"),
        ("eval-batch-0", lambda c: ["eval", m(c), d(c), "--batch-size", "0", "--device", "cpu"], "batch-size"),
        ("eval-batch-neg", lambda c: ["eval", m(c), d(c), "--batch-size", "-2", "--device", "cpu"], "batch-size"),
        ("eval-workers-neg", lambda c: ["eval", m(c), d(c), "--workers", "-1", "--device", "cpu"], "workers"),
        ("eval-device-gpu0", lambda c: ["eval", m(c), d(c), "--device", "gpu0"], "gpu0"),
        ("eval-split-bogus", lambda c: ["eval", m(c), d(c), "--split", "tset", "--device", "cpu"], "tset"),
        ("predict-threshold-2", lambda c: ["predict", m(c), d(c), "--threshold", "2", "--out", c.out / "p"], "threshold"),
        ("predict-threshold-nan", lambda c: ["predict", m(c), d(c), "--threshold", "nan", "--out", c.out / "p"], "threshold"),
        ("predict-threads-0", lambda c: ["predict", m(c), d(c), "--threads", "0", "--out", c.out / "p"], "threads"),
        ("predict-device-gpu0", lambda c: ["predict", m(c), d(c), "--device", "gpu0", "--out", c.out / "p"], "gpu0"),
        ("predict-missing-image", lambda c: ["predict", m(c), c.inp / "nope.jpg", "--out", c.out / "p"], "nope.jpg"),
        ("predict-empty-folder", lambda c: ["predict", m(c), (c.inp / "e").mkdir() or c.inp / "e", "--out", c.out / "p"], "no images"),
        ("check-workers-0", lambda c: ["check-data", d(c), "--workers", "0"], "workers"),
        ("check-workers-neg", lambda c: ["check-data", d(c), "--workers", "-3"], "workers"),
        ("check-missing", lambda c: ["check-data", c.inp / "nothing"], "nothing"),
        ("synth-train-neg", lambda c: ["synth", c.out / "s", "--train", "-3"], "train"),
        ("synth-val-neg", lambda c: ["synth", c.out / "s", "--val", "-1"], "val"),
        ("synth-size-0", lambda c: ["synth", c.out / "s", "--size", "0"], "size"),
        ("synth-size-huge", lambda c: ["synth", c.out / "s", "--size", "1000000", "--train", "1", "--val", "1"], "size"),
        ("synth-seed-neg", lambda c: ["synth", c.out / "s", "--seed", "-1", "--train", "1", "--val", "1"], "seed"),
        ("synth-train-0-val-0", lambda c: ["synth", c.out / "s", "--train", "0", "--val", "0"], "train"),
        ("export-opset-13", lambda c: ["export", m(c), c.out / "m.onnx", "--opset", "13"], "opset"),
        ("export-opset-999", lambda c: ["export", m(c), c.out / "m.onnx", "--opset", "999"], "opset"),
        ("export-missing-model", lambda c: ["export", c.inp / "nomodel", c.out / "m.onnx"], "nomodel"),
        ("export-txt-suffix", lambda c: ["export", m(c), c.out / "m.txt"], "m.txt"),
        ("eval-missing-checkpoint", lambda c: ["eval", c.inp / "nomodel", d(c), "--device", "cpu"], "nomodel"),
        ("eval-missing-data", lambda c: ["eval", m(c), c.inp / "nodata", "--device", "cpu"], "nodata"),
        ("convert-missing", lambda c: ["convert", c.inp / "x.pth", c.out / "conv"], "x.pth"),
        ("resume-empty-folder", lambda c: c.train(out=(c.inp / "emptyrun").mkdir() or c.inp / "emptyrun",
                                                  extra=["--resume"]), "last.pt"),
    ]
    cases = [Case(f"cli-{k}", "cli", b, needs=n) for k, b, n in L]
    cases.append(Case("cli-help-documents-exit-status", "cli", lambda c: ["--help"], expect="ok", subprocess=True,
                      check=lambda c, r: None if re.search(r"exit status", r.out, re.I) and "--debug" in r.out
                      else ("silent", "--help says nothing of exit statuses or --debug")))
    return cases


def _data_cases() -> list[Case]:
    def check(fn, expect="error", needs=""):
        def build(c):
            ds = c.dataset()
            out = fn(c, ds)
            return ["check-data", out if out is not None else ds]
        return build, expect, needs

    def ann(fn):
        return lambda c, ds: (c.edit_ann(ds, fn), None)[1]

    def raw(text: bytes):
        return lambda c, ds: (c.ann(ds).write_bytes(text), None)[1]

    def img0(c, ds):
        return ds / "train" / json.loads(c.ann(ds).read_text())["images"][0]["file_name"]

    def set_img(fn):
        def f(c, ds):
            fn(img0(c, ds))
        return f

    def all_crowd(d):
        for a in d["annotations"]:
            a["iscrowd"] = 1

    def crowd_str(d):
        for a in d["annotations"]:
            a["iscrowd"] = "0"

    def normalised(d):
        for a in d["annotations"]:
            a["bbox"] = [0.1, 0.2, 0.3, 0.25]

    def fifo(p):
        p.unlink()
        os.mkfifo(p)

    def bomb(p):
        from PIL import Image
        p.unlink()
        Image.new("1", (20000, 20000)).save(p.with_suffix(".png"))
        p.with_suffix(".png").rename(p)

    L = {
        "bom": check(lambda c, ds: (c.ann(ds).write_bytes(b"\xef\xbb\xbf" + c.ann(ds).read_bytes()), None)[1], "ok"),
        "truncated-json": check(raw(b'{"images": [')), "empty-json": check(raw(b"")),
        "not-json": check(raw(b"hello")), "json-list": check(raw(b"[1,2]")),
        "latin1-json": check(raw('{"images": [], "info": "caf\xe9"}'.encode("latin-1"))),
        "json-nan": check(ann(lambda d: d["annotations"][0].update(bbox=[float("nan"), 1, 2, 3])), "any"),
        "no-images-key": check(ann(lambda d: d.pop("images"))), "no-annotations-key": check(ann(lambda d: d.pop("annotations"))),
        "annotations-dict": check(ann(lambda d: d.update(annotations={}))),
        "no-categories": check(ann(lambda d: d.update(categories=[]))),
        "bbox-len3": check(ann(lambda d: d["annotations"][0].update(bbox=[1, 2, 3])), "any"),
        "bbox-strings": check(ann(lambda d: d["annotations"][0].update(bbox=["1", "2", "3", "4"])), "any"),
        "bbox-null": check(ann(lambda d: d["annotations"][0].update(bbox=None)), "any"),
        "bbox-neg-wh": check(ann(lambda d: d["annotations"][0].update(bbox=[5, 5, -3, -3])), "any"),
        "category-unknown": check(ann(lambda d: d["annotations"][0].update(category_id=999)), "any"),
        "category-id-string": check(ann(lambda d: d["annotations"][0].update(category_id="1")), "any"),
        "dup-image-ids": check(ann(lambda d: d["images"][1].update(id=d["images"][0]["id"]))),
        "dup-category-ids": check(ann(lambda d: d["categories"].append(dict(d["categories"][0], name="dup")))),
        "image-id-int64+": check(ann(lambda d: [d["images"][0].update(id=2 ** 70)] + [a.update(image_id=2 ** 70)
                                 for a in d["annotations"] if a["image_id"] == d["images"][1]["id"] - 1]), "any"),
        "ann-id-int64+": check(ann(lambda d: d["annotations"][0].update(id=2 ** 64 + 5)), "any"),
        "image-id-float": check(ann(lambda d: d["images"][0].update(id=1.5)), "any"),
        "file-abs-outside": check(ann(lambda d: d["images"][0].update(file_name="/etc/passwd"))),
        "file-dotdot": check(ann(lambda d: d["images"][0].update(file_name="../../x.jpg"))),
        "file-name-int": check(ann(lambda d: d["images"][0].update(file_name=5))),
        "file-name-empty": check(ann(lambda d: d["images"][0].update(file_name=""))),
        "width-string": check(ann(lambda d: d["images"][0].update(width="64")), "any"),
        "width-zero": check(ann(lambda d: d["images"][0].update(width=0))),
        "size-mismatch": check(ann(lambda d: d["images"][0].update(width=65))),
        "all-crowd": check(ann(all_crowd), "error", "box"),
        "iscrowd-string": check(ann(crowd_str), "any"),
        "no-annotations": check(ann(lambda d: d.update(annotations=[])), "error", "box"),
        "normalised-boxes": check(ann(normalised), "warn"),
        "category-name-escape": check(ann(lambda d: d["categories"][0].update(name="\x1b[2J\x1b[31mred")), "ok"),
        "category-name-int": check(ann(lambda d: d["categories"][0].update(name=7)), "any"),
        "category-ids-zero-based": check(ann(lambda d: ([c.update(id=c["id"] - 1) for c in d["categories"]],
                                                        [a.update(category_id=a["category_id"] - 1) for a in d["annotations"]])), "ok"),
        "image-missing": check(set_img(lambda p: p.unlink())), "image-empty": check(set_img(lambda p: p.write_bytes(b""))),
        "image-truncated": check(set_img(lambda p: p.write_bytes(p.read_bytes()[:200]))),
        "image-is-text": check(set_img(lambda p: p.write_text("not an image"))),
        "image-is-folder": check(set_img(lambda p: (p.unlink(), p.mkdir()))),
        "image-fifo": check(set_img(fifo), "error", "fifo"),
        "image-bomb": check(set_img(bomb)),
        "image-symlink-loop": check(set_img(lambda p: (p.unlink(), p.symlink_to(p)))),
        "ann-is-folder": check(lambda c, ds: (c.ann(ds).unlink(), c.ann(ds).mkdir(), None)[2]),
        "ann-fifo": check(lambda c, ds: (c.ann(ds).unlink(), os.mkfifo(c.ann(ds)), None)[2]),
        "dataset-empty-folder": check(lambda c, ds: (shutil.rmtree(ds), ds.mkdir(), None)[2]),
        "dataset-is-jpeg": check(lambda c, ds: img0(c, ds)),
        "split-val-missing": check(lambda c, ds: (shutil.rmtree(ds / "valid"), None)[1], "ok"),
        "huge-bbox-values": check(ann(lambda d: d["annotations"][0].update(bbox=[1e308, 1e308, 1e308, 1e308])), "any"),
    }
    cases = [Case(f"data-{k}", "data", b, expect=e, needs=n) for k, (b, e, n) in L.items()]
    cases[-1].build = lambda c: ["check-data", c.dataset(), "--split", "val"]

    # Training (the same rules as check-data, and the consequences that only the data reveal).
    def tr(name, fn, expect="any", needs="", *ov):
        def build(c):
            ds = fn(c)
            return c.train(*ov, data=ds)
        return Case(f"train-{name}", "data", build, expect=expect, needs=needs)

    def with_ann(fn):
        def f(c):
            ds = c.dataset()
            c.edit_ann(ds, fn)
            return ds
        return f

    def colon(c):
        ds = c.inp / "my:data"
        shutil.copytree(c.shared["dataset"], ds)
        return ds

    def bom(c):
        ds = c.dataset()
        for s in ("train", "val"):
            p = c.ann(ds, s)
            p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
        return ds

    def no_val(c):
        ds = c.dataset()
        shutil.rmtree(ds / "valid")
        return ds

    def one_class(c):
        ds = c.dataset()
        for s in ("train", "val"):
            c.edit_ann(ds, lambda d: (d.update(categories=d["categories"][:1]),
                                       [a.update(category_id=d["categories"][0]["id"]) for a in d["annotations"]]), s)
        return ds

    def val_extra_class(c):
        ds = c.dataset()
        c.edit_ann(ds, lambda d: d["categories"].append({"id": 77, "name": "extra"}), "val")
        return ds

    def val_renamed(c):
        ds = c.dataset()
        c.edit_ann(ds, lambda d: d["categories"][0].update(name="renamed"), "val")
        return ds

    cases += [
        tr("bom", bom, "ok"), tr("colon-in-path", colon, "ok"),
        tr("extreme-aspect", lambda c: one_image_ds(c, 4000, 8, [10, 1, 100, 5]), "any", "", "train.batch_size=1"),
        tr("image-id-int64+", lambda c: one_image_ds(c, 64, 64, [5, 5, 20, 20], extra_img={"id": 2 ** 70}), "any", "", "train.batch_size=1"),
        tr("all-crowd", with_ann(all_crowd), "error", "box"),
        tr("no-annotations", with_ann(lambda d: d.update(annotations=[])), "error", "box"),
        tr("normalised-boxes", with_ann(normalised), "warn"),
        tr("val-missing", no_val, "warn"),
        tr("one-class-topk", one_class, "ok", "", "model.topk=30"),  # capped at 10 queries x 1 class, with a note
        tr("val-extra-class", val_extra_class, "error", "categor"),
        tr("val-renamed-class", val_renamed, "error", "categor"),
        tr("image-fifo", lambda c: (lambda ds: (fifo(ds / "train" / json.loads(c.ann(ds).read_text())["images"][0]["file_name"]), ds)[1])(c.dataset()), "error"),
        tr("data-is-file", lambda c: jpeg(c.inp / "x.jpg"), "error", "x.jpg"),
        tr("queries-below-objects", lambda c: c.dataset(), "warn", "", "model.num_queries=2", "model.topk=2"),
    ]
    return cases


def _weight_key(state) -> str:
    """A 2-D floating weight of the detection head (the class head if named so)."""
    keys = sorted(k for k, v in state.items() if v.is_floating_point() and v.dim() == 2)
    return next((k for k in keys if "class" in k), keys[-1])


def _model_cases() -> list[Case]:
    def mdl(fn, cmd="eval", needs=""):
        def build(c):
            p = c.model()
            target = fn(c, p)
            target = target if isinstance(target, Path) else p
            if cmd == "eval":
                return ["eval", target, c.dataset(), "--device", "cpu"]
            if cmd == "predict":
                return ["predict", target, jpeg(c.inp / "img" / "a.jpg"), "--out", c.out / "p"]
            return ["export", target, c.out / "m.onnx", "--no-verify"]
        return build, needs

    import torch

    def nan(s):
        k = _weight_key(s)
        s[k] = torch.full_like(s[k], float("nan"))

    def ints(s):
        k = _weight_key(s)
        s[k] = s[k].to(torch.int32)

    def shape(s):
        k = _weight_key(s)
        s[k] = torch.zeros(s[k].shape[0] + 3, s[k].shape[1])

    def drop(s):
        s.pop(next(iter(sorted(s))))

    def pt_no_config(c, p):
        from safetensors.torch import load_file
        torch.save({"model": load_file(str(p / "model.safetensors"))}, c.inp / "x.pt")
        return c.inp / "x.pt"

    def official_bad_args(c, p):
        from safetensors.torch import load_file
        torch.save({"model": load_file(str(p / "model.safetensors")), "args": {"num_queries": "many", "dec_layers": [1]}},
                   c.inp / "o.pth")
        return c.inp / "o.pth"

    def official_args_ns(c, p):
        torch.save({"model": {}, "args": "not a namespace"}, c.inp / "o.pth")
        return c.inp / "o.pth"

    def pickled_code(c, p):
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + str(c.out / "pwned"),))
        (c.inp / "e.pt").write_bytes(pickle.dumps({"model": Evil()}))
        return c.inp / "e.pt"

    def meta_binary(c, p):
        write_state(p, lambda s: None)
        from safetensors import safe_open
        from safetensors.torch import save_file
        with safe_open(str(p / "model.safetensors"), "pt") as f:
            st = {k: f.get_tensor(k) for k in f.keys()}
        save_file(st, str(p / "model.safetensors"), metadata={"format": "hdetr", "class_names": "\x00\x01{["})

    def meta_names_dict(c, p):
        from safetensors import safe_open
        from safetensors.torch import save_file
        with safe_open(str(p / "model.safetensors"), "pt") as f:
            st, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        meta["class_names"] = json.dumps({"a": 1})
        save_file(st, str(p / "model.safetensors"), metadata=meta)

    def meta_cmap_bad(c, p):
        from safetensors import safe_open
        from safetensors.torch import save_file
        with safe_open(str(p / "model.safetensors"), "pt") as f:
            st, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        for k in [k for k in meta if k not in ("format", "class_names")] or ["category_map"]:
            meta[k] = "{broken"
        save_file(st, str(p / "model.safetensors"), metadata=meta)

    L = {
        "folder-empty": mdl(lambda c, p: (shutil.rmtree(p), p.mkdir(), None)[2], needs="model"),
        "weights-random": mdl(lambda c, p: (p / "model.safetensors").write_bytes(os.urandom(4096)), needs="safetensors"),
        "weights-truncated": mdl(lambda c, p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:5000]), needs="safetensors"),
        "weights-empty": mdl(lambda c, p: (p / "model.safetensors").write_bytes(b""), needs="safetensors"),
        "config-binary": mdl(lambda c, p: (p / "config.yaml").write_bytes(bytes(range(256))), needs="config.yaml"),
        "config-malformed": mdl(lambda c, p: (p / "config.yaml").write_text("model: [\n"), needs="config.yaml"),
        "config-missing": mdl(lambda c, p: (p / "config.yaml").unlink(), needs="config.yaml"),
        "config-list": mdl(lambda c, p: (p / "config.yaml").write_text("- 1\n"), needs="config.yaml"),
        "config-bad-value": mdl(lambda c, p: (p / "config.yaml").write_text(
            (p / "config.yaml").read_text().replace("num_queries: 10", "num_queries: -4")), needs="config.yaml"),
        "config-unknown-key": mdl(lambda c, p: (p / "config.yaml").write_text(
            (p / "config.yaml").read_text() + "extra_section: {a: 1}\n"), needs="config.yaml"),
        "weights-nan": mdl(lambda c, p: write_state(p, nan) and None, needs="nan"),
        "weights-nan-predict": mdl(lambda c, p: write_state(p, nan) and None, "predict", needs="nan"),
        "weights-int": mdl(lambda c, p: write_state(p, ints) and None, needs="model"),
        "weights-shape": mdl(lambda c, p: write_state(p, shape) and None, needs="model"),
        "weights-missing-key": mdl(lambda c, p: write_state(p, drop) and None, needs="model"),
        "weights-nan-export": mdl(lambda c, p: write_state(p, nan) and None, "export", needs="nan"),
        "pt-no-config": mdl(pt_no_config, needs="x.pt"),
        "pt-random": mdl(lambda c, p: ((c.inp / "r.pt").write_bytes(os.urandom(1000)), c.inp / "r.pt")[1], needs="r.pt"),
        "pt-empty-dict": mdl(lambda c, p: (torch.save({}, c.inp / "e.pt"), c.inp / "e.pt")[1], needs="e.pt"),
        "pt-tensor": mdl(lambda c, p: (torch.save(torch.zeros(3), c.inp / "t.pt"), c.inp / "t.pt")[1], needs="t.pt"),
        "pth-bad-args": mdl(official_bad_args, needs="o.pth"),
        "pth-args-string": mdl(official_args_ns, needs="o.pth"),
        "pt-pickled-code": mdl(pickled_code, needs="e.pt"),
        "meta-class-names-binary": mdl(meta_binary, needs="model"),
        "meta-class-names-dict": mdl(meta_names_dict, needs="model"),
        "meta-category-map-broken": mdl(meta_cmap_bad, "eval", needs="model"),
        "checkpoint-is-jpeg": mdl(lambda c, p: jpeg(c.inp / "m.jpg"), needs="m.jpg"),
        "predict-model-is-txt": mdl(lambda c, p: ((c.inp / "m.txt").write_text("hi"), c.inp / "m.txt")[1], "predict", needs="m.txt"),
    }
    cases = [Case(f"model-{k}", "model", b, needs=n) for k, (b, n) in L.items()]

    def eval_other_categories(c):
        ds = c.dataset()
        for s in ("train", "val"):
            c.edit_ann(ds, lambda d: ([x.update(name="other_" + x["name"]) for x in d["categories"]]), s)
        return ["eval", c.model(), ds, "--device", "cpu"]

    def eval_other_ids(c):
        ds = c.dataset()
        for s in ("train", "val"):
            c.edit_ann(ds, lambda d: ([x.update(id=x["id"] + 50) for x in d["categories"]],
                                      [a.update(category_id=a["category_id"] + 50) for a in d["annotations"]]), s)
        return ["eval", c.model(), ds, "--device", "cpu"]

    def resume_renamed(c):
        run = c.inp / "run"
        shutil.copytree(c.shared["run"], run)
        ds = c.dataset()
        for s in ("train", "val"):
            c.edit_ann(ds, lambda d: ([x.update(name="zz_" + x["name"]) for x in d["categories"]]), s)
        return c.train(data=ds, out=run, extra=["--resume"]) + ["train.max_iters=2"]

    def resume_no_weights(c):
        run = c.out / "run"
        shutil.copytree(c.shared["run"], run)
        shutil.copy(run / "last.pt", run / "prev.pt")
        ckpt = torch.load(run / "last.pt", weights_only=False)
        ckpt.pop("model")
        torch.save(ckpt, run / "last.pt")
        return c.train(out=run, extra=["--resume"]) + ["train.max_iters=2"]

    def resume_garbage(c):
        run = c.out / "run"
        shutil.copytree(c.shared["run"], run)
        (run / "last.pt").write_bytes(b"garbage")
        return c.train(out=run, extra=["--resume"]) + ["train.max_iters=2"]

    cases += [Case("model-eval-other-names", "model", eval_other_categories, needs="categor"),
              Case("model-eval-other-ids", "model", eval_other_ids, needs="categor"),
              Case("model-resume-renamed-categories", "model", resume_renamed, needs="categor"),
              Case("model-resume-last-without-weights", "model", resume_no_weights, expect="ok"),
              Case("model-resume-last-garbage-no-prev", "model", resume_garbage, needs="last.pt")]
    cases += [Case("model-convert-random", "model",
                   lambda c: ["convert", (c.inp / "r.pth").write_bytes(os.urandom(500)) and c.inp / "r.pth", c.out / "cv"],
                   needs="r.pth")]
    return cases


def _onnx_cases() -> list[Case]:
    def pred(fn, needs):
        def build(c):
            return ["predict", fn(c), jpeg(c.inp / "img" / "a.jpg"), "--out", c.out / "p"]
        return build, needs

    L = {
        "random-bytes": pred(lambda c: ((c.inp / "r.onnx").write_bytes(os.urandom(3000)), c.inp / "r.onnx")[1], "r.onnx"),
        "empty": pred(lambda c: ((c.inp / "e.onnx").write_bytes(b""), c.inp / "e.onnx")[1], "e.onnx"),
        "text": pred(lambda c: ((c.inp / "t.onnx").write_text("hello"), c.inp / "t.onnx")[1], "t.onnx"),
        "foreign-graph": pred(lambda c: onnx_identity(c.inp / "id.onnx"), "id.onnx"),
        "folder": pred(lambda c: ((c.inp / "d.onnx").mkdir(), c.inp / "d.onnx")[1], "d.onnx"),
        "missing": pred(lambda c: c.inp / "missing.onnx", "missing.onnx"),
        "safetensors-renamed": pred(lambda c: (shutil.copy(c.shared["model"] / "model.safetensors", c.inp / "s.onnx"),
                                               c.inp / "s.onnx")[1], "s.onnx"),
    }
    cases = [Case(f"onnx-{k}", "onnx", b, needs=n) for k, (b, n) in L.items()]
    cases.append(Case("onnx-predict-backend-mismatch", "onnx",
                      lambda c: ["predict", onnx_identity(c.inp / "id.onnx"), jpeg(c.inp / "a.jpg"), "--backend", "torch",
                                 "--out", c.out / "p"], needs="onnx"))
    return cases


def _output_cases() -> list[Case]:
    def predict_into_input(c):
        folder = c.inp / "photos"
        jpeg(folder / "a.jpg")
        jpeg(folder / "b.jpg", color=(0, 200, 0))
        return ["predict", c.model(), folder, "--out", folder]

    def predict_into_parent(c):
        folder = c.inp / "photos"
        jpeg(folder / "sub" / "a.jpg")
        return ["predict", c.model(), folder / "sub", "--out", folder]

    def predict_out_file(c):
        (c.inp / "f").write_text("mine")
        return ["predict", c.model(), jpeg(c.inp / "a.jpg"), "--out", c.inp / "f"]

    # (A full disk is not simulated: writing to /dev/full as root would let a faulty writer replace it.)
    def predict_out_under_file(c):
        (c.inp / "f").write_text("mine")
        return ["predict", c.model(), jpeg(c.inp / "a.jpg"), "--out", c.inp / "f" / "p"]

    def predict_overwrites_user_json(c):
        out = c.inp / "outdir"
        out.mkdir()
        (out / "detections.json").write_text("my own file")
        return ["predict", c.model(), jpeg(c.inp / "a.jpg"), "--out", out]

    def eval_out_is_dir(c):
        (c.inp / "d").mkdir()
        return ["eval", c.model(), c.dataset(), "--out", c.inp / "d", "--device", "cpu"]

    def eval_out_is_ann(c):
        ds = c.dataset()
        return ["eval", c.model(), ds, "--out", c.ann(ds, "val"), "--device", "cpu"]

    def eval_out_under_file(c):
        (c.inp / "f").write_text("mine")
        return ["eval", c.model(), c.dataset(), "--out", c.inp / "f" / "m.json", "--device", "cpu"]

    def eval_out_user_file(c):
        (c.inp / "metrics.json").write_text("precious")
        return ["eval", c.model(), c.dataset(), "--out", c.inp / "metrics.json", "--device", "cpu"]

    def check_json_is_ann(c):
        ds = c.dataset()
        return ["check-data", ds, "--json", c.ann(ds)]

    def check_json_is_dir(c):
        (c.inp / "rep").mkdir()
        return ["check-data", c.dataset(), "--json", c.inp / "rep"]

    def export_out_is_dir(c):
        (c.inp / "o.onnx").mkdir()
        return ["export", c.model(), c.inp / "o.onnx", "--no-verify"]

    def export_out_is_input(c):
        m = c.model()
        return ["export", m, m / "model.onnx.onnx", "--no-verify"] if False else ["export", m, c.inp / "user.onnx", "--no-verify"]

    def export_out_user_file(c):
        (c.inp / "user.onnx").write_text("someone else's file")
        return ["export", c.model(), c.inp / "user.onnx", "--no-verify"]

    def train_out_is_file(c):
        (c.inp / "runfile").write_text("x")
        return c.train(out=c.inp / "runfile")

    def train_out_is_dataset(c):
        ds = c.dataset()
        return c.train(data=ds, out=ds)

    def train_out_user_folder(c):
        (c.inp / "mine").mkdir()
        (c.inp / "mine" / "last.pt").write_text("my notes, not a checkpoint")
        return c.train(out=c.inp / "mine")

    def train_locked(c):
        run = c.out / "run"
        run.mkdir(parents=True)
        holder = subprocess.Popen([sys.executable, "-c", (
            "import sys, time; sys.path.insert(0, sys.argv[1]);\n"
            "from pathlib import Path\n"
            "try:\n from hdetr.engine.runlock import RunLock\n lock = RunLock(Path(sys.argv[2])); lock.acquire()\n"
            "except ImportError:\n pass\n"
            "print('locked', flush=True); time.sleep(120)"), str(ROOT), str(run)], stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
        c.holder = holder
        return c.train(out=run)

    def train_locked_check(c, r):
        c.holder.kill()
        c.holder.wait()
        return None

    def demo_keeps_run(c):
        d = c.inp / "demo"
        (d / "run").mkdir(parents=True)
        (d / "run" / "notes.txt").write_text("the user's notes")
        return ["demo", "--out", d, "train.max_iters=1", "train.epochs=1", "--device", "cpu", "--no-progress"]

    def synth_over_file(c):
        (c.inp / "s").write_text("x")
        return ["synth", c.inp / "s", "--train", "1", "--val", "1"]

    def synth_existing(c):
        (c.inp / "s").mkdir()
        (c.inp / "s" / "keep.txt").write_text("keep")
        return ["synth", c.inp / "s", "--train", "1", "--val", "1"]

    def convert_out_is_model(c):
        import torch
        from safetensors.torch import load_file
        m = c.model()
        torch.save({"model": load_file(str(m / "model.safetensors")), "args": {}}, c.inp / "o.pth")
        return ["convert", c.inp / "o.pth", m]

    return [
        Case("out-predict-into-input", "output", predict_into_input, needs="--out"),
        Case("out-predict-into-parent", "output", predict_into_parent, expect="any"),
        Case("out-predict-is-file", "output", predict_out_file, needs="f"),
        Case("out-predict-under-file", "output", predict_out_under_file, needs="f"),
        Case("out-predict-user-json", "output", predict_overwrites_user_json, needs="detections.json"),
        Case("out-eval-is-dir", "output", eval_out_is_dir, expect="any"),  # a folder gets the evaluation report
        Case("out-eval-is-annotations", "output", eval_out_is_ann, needs="json"),
        Case("out-eval-under-file", "output", eval_out_under_file, needs="f"),
        Case("out-eval-user-file", "output", eval_out_user_file, needs="metrics.json"),
        Case("out-check-json-is-annotations", "output", check_json_is_ann, needs="json"),
        Case("out-check-json-is-dir", "output", check_json_is_dir, needs="rep"),
        Case("out-export-is-dir", "output", export_out_is_dir, needs="o.onnx"),
        Case("out-export-user-file", "output", export_out_user_file, needs="user.onnx"),
        Case("out-train-is-file", "output", train_out_is_file, needs="runfile"),
        Case("out-train-is-dataset", "output", train_out_is_dataset, needs="--out"),
        Case("out-train-user-folder", "output", train_out_user_folder, needs="mine"),
        Case("out-train-locked", "output", train_locked, needs="in use", check=train_locked_check),
        Case("out-demo-keeps-run", "output", demo_keeps_run, needs="run"),
        Case("out-synth-over-file", "output", synth_over_file, needs="s"),
        Case("synth-existing-folder", "output", synth_existing, expect="error"),
        Case("out-convert-over-model", "output", convert_out_is_model, needs="model"),
    ]


def _fault_cases() -> list[Case]:
    def debug_traceback(c):
        return ["eval", c.model(), c.inp / "nodata", "--device", "cpu"]

    return [
        Case("fault-debug-env-shows-traceback", "fault", debug_traceback, env={"HDETR_DEBUG": "1"}, subprocess=True,
             check=lambda c, r: None if "Traceback" in r.err else ("silent", "HDETR_DEBUG=1 shows no traceback")),
        Case("fault-stdin-closed-check", "fault", lambda c: ["check-data", c.dataset()], expect="ok", subprocess=True),
        Case("fault-home-readonly-eval", "fault", lambda c: ["eval", c.model(), c.dataset(), "--device", "cpu"],
             expect="ok", subprocess=True, env={"HOME": "/proc/hdetr-no-home"}),
        Case("fault-onnx-telemetry", "fault",
             lambda c: ["predict", onnx_identity(c.inp / "id.onnx"), jpeg(c.inp / "a.jpg"), "--out", c.out / "p"],
             expect="error"),
    ]


# ---------------------------------------------------------------- errors from worker processes

def _worker_cases() -> list[Case]:
    """An image that fails inside a DataLoader worker (eval reads images only there): the worker's error,
    one line, as the main process would give it."""
    def val_img(c, ds):
        return ds / "valid" / json.loads(c.ann(ds, "val").read_text())["images"][0]["file_name"]

    def ev(name, spoil, workers="2"):
        def build(c):
            ds = c.dataset()
            img = val_img(c, ds)
            spoil(c, img)
            return ["eval", c.model(), ds, "--workers", workers, "--device", "cpu", "--no-progress"]
        return Case(f"worker-eval-{name}", "worker", build, needs="valid_000000", check=_one_line_error)

    def size(c, p):
        jpeg(p, 40, 30)

    return [
        ev("truncated", lambda c, p: p.write_bytes(p.read_bytes()[:150])),
        ev("missing", lambda c, p: p.unlink()),
        ev("text", lambda c, p: p.write_text("not an image")),
        ev("empty", lambda c, p: p.write_bytes(b"")),
        ev("wrong-size", size),
        ev("symlink-loop", lambda c, p: (p.unlink(), p.symlink_to(p))),
        ev("folder", lambda c, p: (p.unlink(), p.mkdir())),
        ev("truncated-one-worker", lambda c, p: p.write_bytes(p.read_bytes()[:150]), workers="1"),
        ev("truncated-no-worker", lambda c, p: p.write_bytes(p.read_bytes()[:150]), workers="0"),
    ]


def _one_line_error(c, r):
    lines = [x for x in r.err.splitlines() if x.strip()]
    if len(lines) != 1:
        return "traceback", f"{len(lines)} lines on stderr, not one: {lines[:2]}"
    return None


# ---------------------------------------------------------------- nothing to do

def _nothing_to_do_cases() -> list[Case]:
    def split_doc(fn, split="val"):
        def build(c):
            ds = c.dataset()
            c.edit_ann(ds, fn, split)
            return ds
        return build

    def no_images(d):
        d.update(images=[], annotations=[])

    def no_anns(d):
        d.update(annotations=[])

    def crowd_only(d):
        for a in d["annotations"]:
            a["iscrowd"] = 1

    def ev(name, fn, needs="annotations"):
        return Case(f"empty-eval-{name}", "empty",
                    lambda c: ["eval", c.model(), split_doc(fn)(c), "--device", "cpu", "--workers", "0"], needs=needs)

    def tr(name, fn, split, needs):
        return Case(f"empty-train-{name}", "empty", lambda c: c.train(data=split_doc(fn, split)(c)), needs=needs)

    def predict_folder(fill):
        def build(c):
            folder = c.inp / "photos"
            folder.mkdir()
            fill(folder)
            return ["predict", c.model(), folder, "--out", c.out / "p"]
        return build

    def video_file(data: bytes | None):
        def build(c):
            v = c.inp / "clip.mp4"
            if data is None:
                import av
                with av.open(str(v), "w") as out:  # a video stream and no frame: PyAV writes no file
                    s = out.add_stream("mpeg4", rate=25)
                    s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
            else:
                v.write_bytes(data)
            return ["predict", c.model(), v, "--out", c.out / "p"]
        return build

    def no_video_written(c, r):
        left = [p.name for p in (c.out / "p").glob("*")] if (c.out / "p").exists() else []
        return ("unsafe", f"left {left} after refusing") if left else None

    def audio_only(c):
        import av
        import numpy as np
        v = c.inp / "sound.mp4"
        with av.open(str(v), "w") as out:
            s = out.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in s.encode(frame):
                out.mux(packet)
            for packet in s.encode(None):
                out.mux(packet)
        return ["predict", c.model(), v, "--out", c.out / "p"]

    return [
        ev("no-images", no_images, "no images"),
        ev("no-annotations", no_anns),
        ev("crowd-only", crowd_only),
        Case("empty-eval-json-no-images", "empty",
             lambda c: ["eval", c.model(), split_doc(no_images)(c) / "valid" / "_annotations.coco.json", "--device", "cpu"],
             needs="no images"),
        Case("empty-eval-tiled-no-annotations", "empty",
             lambda c: ["eval", c.model(), split_doc(no_anns)(c), "--device", "cpu", "--tile", "32"], needs="annotat"),
        tr("train-no-images", no_images, "train", "image"),
        tr("val-no-images", no_images, "val", "image"),
        tr("val-no-annotations", no_anns, "val", "box"),
        Case("empty-check-data-val-no-images", "empty",
             lambda c: ["check-data", split_doc(no_images)(c), "--split", "val"], needs="image"),
        Case("empty-predict-only-text-files", "empty",
             predict_folder(lambda f: [(f / n).write_text("x") for n in ("a.txt", "b.csv")]), needs="image"),
        Case("empty-predict-nested-empty-folders", "empty",
             predict_folder(lambda f: [(f / "a" / "b").mkdir(parents=True)]), needs="image"),
        Case("empty-predict-video-0-bytes", "empty", video_file(b""), needs="clip.mp4", check=no_video_written),
        Case("empty-predict-video-garbage", "empty", video_file(os.urandom(2000)), needs="clip.mp4",
             check=no_video_written),
        Case("empty-predict-video-stream-never-written", "empty", video_file(None), needs="clip.mp4", check=no_video_written),
        Case("empty-predict-video-audio-only", "empty", audio_only, needs="sound.mp4", check=no_video_written),
    ]


# ---------------------------------------------------------------- ambiguous metadata

def _ambiguous_cases() -> list[Case]:
    def names(*new):
        def fn(d):
            for cat, name in zip(d["categories"], new):
                cat["name"] = name
        return fn

    def image_twice(spelling):
        def fn(d):
            first = d["images"][0]
            d["images"].append({**first, "id": max(i["id"] for i in d["images"]) + 1,
                                "file_name": spelling(first["file_name"])})
        return fn

    L = {
        "four-named-shape": names("shape", "shape", "shape", "shape"),
        "two-named-alike": names("car", "car", "bus", "truck"),
        "case-only": names("Car", "car", "bus", "truck"),
        "whitespace-only": names("car", "car ", "bus", "truck"),
        "inner-whitespace": names("fire hydrant", "fire  hydrant", "bus", "truck"),
        "casefold-unicode": names("STRASSE", "straße", "bus", "truck"),
        "empty-names": names("", "", "bus", "truck"),
        "blank-vs-empty": names("", "  ", "bus", "truck"),
        "image-listed-twice": image_twice(lambda f: f),
        "image-listed-twice-dot-slash": image_twice(lambda f: "./" + f),
    }
    cases = []
    for k, fn in L.items():
        cases.append(Case(f"ambiguous-check-{k}", "ambiguous",
                          lambda c, fn=fn: ["check-data", (lambda ds: (c.edit_ann(ds, fn), ds)[1])(c.dataset())],
                          expect="warn"))
    for k in ("four-named-shape", "case-only", "image-listed-twice"):
        def build(c, fn=L[k]):
            ds = c.dataset()
            c.edit_ann(ds, fn)
            c.edit_ann(ds, fn, "val")
            return c.train(data=ds)
        cases.append(Case(f"ambiguous-train-{k}", "ambiguous", build, expect="warn"))
    return cases


# ---------------------------------------------------------------- input echoed without bound

# Characters of stderr + stdout a refusal may take: hdetr.cli caps a message at 4000 (a path typed on the
# command line is shown whole up to there: a path cut short cannot be found); quoted values at 200.
ECHO_LIMIT = 5000


def _short(c, r):
    n = len(r.err) + len(r.out)
    return ("unsafe", f"the answer echoed {n} characters of input") if n > ECHO_LIMIT else None


def _echo_cases() -> list[Case]:
    big = "x" * 1_000_000

    def ann(fn):
        def build(c):
            ds = c.dataset()
            c.edit_ann(ds, fn)
            return ["check-data", ds]
        return build

    def cfg_yaml(text):
        def build(c):
            (c.inp / "big.yaml").write_text(text)
            return ["train", c.inp / "big.yaml", f"data.train={c.inp / 'nodata'}", "--out", c.out / "r"]
        return build

    bomb = ("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
            "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n_base_: [*e,*e,*e]\n")
    L = {
        "base-alias-bomb": (cfg_yaml(bomb), "_base_", "error"),
        "scheme-1mb": (cfg_yaml(f"hybrid: {{scheme: {big}}}\n"), "scheme", "error"),
        "lr-list-20k": (cfg_yaml("train: {lr: [" + ",".join(["1"] * 20_000) + "]}\n"), "train.lr", "error"),
        "override-value-1mb": (lambda c: c.train(f"train.lr={big}", data=c.inp / "nodata"), "train.lr", "error"),
        "override-key-100k": (lambda c: c.train("k" * 100_000 + "=1", data=c.inp / "nodata"), "", "error"),
        "backbone-100k": (lambda c: c.train("model.backbone=" + "r" * 100_000, data=c.inp / "nodata"), "backbone", "error"),
        "device-100k": (lambda c: c.train(data=c.inp / "nodata", extra=["--device", "c" * 100_000]), "device", "error"),
        "category-id-1mb": (ann(lambda d: d["annotations"][0].update(category_id=big)), "", "any"),
        "bbox-100k-numbers": (ann(lambda d: d["annotations"][0].update(bbox=list(range(100_000)))), "", "any"),
        "width-1mb": (ann(lambda d: d["images"][0].update(width=big)), "", "any"),
        "iscrowd-list-100k": (ann(lambda d: d["annotations"][0].update(iscrowd=[0] * 100_000)), "", "any"),
        "file-name-100k": (ann(lambda d: d["images"][0].update(file_name="a" * 100_000 + ".jpg")), "", "any"),
        "category-name-1mb": (ann(lambda d: d["categories"][0].update(name=big)), "", "any"),
        "image-id-1mb-string": (ann(lambda d: d["images"][0].update(id=big)), "", "any"),
        "predict-path-5000": (lambda c: ["predict", c.model(), c.inp / ("p" * 5000 + ".jpg"), "--out", c.out / "p"], "", "error"),
        "eval-data-10000": (lambda c: ["eval", c.model(), str(c.inp / ("d" * 10000)), "--device", "cpu"], "", "error"),
    }
    return [Case(f"echo-{k}", "echo", b, expect=e, needs=n, check=_short) for k, (b, n, e) in L.items()]


# ---------------------------------------------------------------- hdetr serve's options

def _serve_cli_cases() -> list[Case]:
    bad = {"read-timeout-0": (["--read-timeout", "0"], "read-timeout"),
           "read-timeout-nan": (["--read-timeout", "nan"], "read-timeout"),
           "read-timeout-neg": (["--read-timeout", "-5"], "read-timeout"),
           "max-connections-0": (["--max-connections", "0"], "max-connections"),
           "max-waiting-neg": (["--max-waiting", "-1"], "max-waiting"),
           "port-70000": (["--port", "70000"], "port"),
           "threshold-2": (["--threshold", "2"], "threshold"),
           "max-upload-0": (["--max-upload-mb", "0"], "max-upload-mb"),
           "max-megapixels-neg": (["--max-megapixels", "-1"], "max-megapixels"),
           "cors-missing-value": (["--cors"], "cors"),
           "model-missing": ([], "nomodel")}
    return [Case(f"serve-{k}", "serve", lambda c, a=a: ["serve", c.inp / "nomodel", *a], needs=n)
            for k, (a, n) in bad.items()]


# ---------------------------------------------------------------- read-only and full file systems

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _mount(c, size="2m", read_only=False, full=False) -> Path:
    where = c.out / "mnt"
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    c.mounted = where
    if full:
        with open(where / "filler.bin", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    return where


def _unmount(c) -> None:
    if getattr(c, "mounted", None) is not None:
        subprocess.run(["umount", "-l", str(c.mounted)], check=False)


def _mount_cases() -> list[Case]:
    """Only as root (mounting a tmpfs; root ignores permission bits, a read-only mount refuses it too)."""
    if not AS_ROOT:
        return []

    def ro(argv_of):
        return lambda c: argv_of(c, _mount(c, read_only=True))

    def full(argv_of):
        return lambda c: argv_of(c, _mount(c, "4m", full=True))

    def img(c):
        return jpeg(c.inp / "photos" / "a.jpg")

    L = {
        "readonly-train": (ro(lambda c, m: c.train(out=m / "run")), "read-only"),
        "readonly-eval": (ro(lambda c, m: ["eval", c.model(), c.dataset(), "--out", m / "rep", "--device", "cpu"]), "read-only"),
        "readonly-predict": (ro(lambda c, m: ["predict", c.model(), img(c), "--out", m / "p"]), "read-only"),
        "readonly-export": (ro(lambda c, m: ["export", c.model(), m / "m.onnx", "--no-verify"]), "read-only"),
        "readonly-demo": (ro(lambda c, m: ["demo", "--out", m / "d", "--device", "cpu"]), "read-only"),
        "readonly-check-json": (ro(lambda c, m: ["check-data", c.dataset(), "--json", m / "r.json"]), "r.json"),
        "full-predict": (full(lambda c, m: ["predict", c.model(), img(c), "--out", m / "p"]), "disk is full"),
        "full-eval-json": (full(lambda c, m: ["eval", c.model(), c.dataset(), "--out", m / "m.json", "--device", "cpu",
                                              "--workers", "0"]), "disk is full"),
        "full-check-json": (full(lambda c, m: ["check-data", c.dataset(), "--json", m / "r.json"]), "r.json"),
    }
    return [Case(f"fault-{k}", "fault", b, needs=n, check=_one_line_error, cleanup=_unmount) for k, (b, n) in L.items()]


def all_cases() -> list[Case]:
    return _cfg_cases() + _cfg_file_cases() + _cli_cases() + _data_cases() + _model_cases() + _onnx_cases() \
        + _output_cases() + _fault_cases() + _worker_cases() + _nothing_to_do_cases() + _ambiguous_cases() \
        + _echo_cases() + _serve_cli_cases() + _mount_cases()


def table(results: dict) -> dict:
    counts = {k: 0 for k in KINDS}
    for kind, _ in results.values():
        counts[kind] += 1
    by_area: dict = {}
    for cid, (kind, _) in results.items():
        area = next(c.area for c in all_cases() if c.id == cid) if False else cid.split("-")[0]
        by_area.setdefault(area, {k: 0 for k in KINDS})[kind] += 1
    return {"cases": len(results), "kinds": counts, "by_area": by_area,
            "results": {cid: {"kind": k, "why": w} for cid, (k, w) in results.items()}}


def main(argv=None) -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("-k", default="")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        shared = make_shared(Path(tmp) / "shared")
        for case in all_cases():
            if a.k not in case.id:
                continue
            kind, res, why = run_case(case, Path(tmp) / "cases" / re.sub(r"[^\w.-]", "_", case.id), shared)
            results[case.id] = (kind, why)
            print(f"{kind:15s} {res.seconds:6.1f}s {case.id}: {why}", flush=True)
    t = table(results)
    print(json.dumps({"cases": t["cases"], "kinds": t["kinds"]}, indent=1))
    if a.json:
        a.json.write_text(json.dumps(t, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
