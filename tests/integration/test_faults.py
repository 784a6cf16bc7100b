"""Faults: a full disk, read-only output folders and SIGTERM, each ending in one line and leaving no
half-written file under a final name.

A full disk and a read-only folder are real: a size-limited tmpfs mounted by the test (remounted
read-only for the read-only cases), so these tests run only as root (skipped otherwise: root ignores
permission bits, and only root can mount). The SIGTERM cases run the CLI as a subprocess whose
``files.atomic_write`` holds each temporary file open for a minute, so that the signal lands inside a
write.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from hdetr.cli import main
from hdetr.files import temp_files
from support import bad_input_corpus as corpus
from support.engine_helpers import TINY_MODEL, load_state
from support.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.process]

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="mounting a size-limited tmpfs needs root")


@contextmanager
def tmpfs(path: Path, size: str = "64m", read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
        # (read_only: the caller fills the folder first, then calls remount_ro)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_ro(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; removing it gives the space back."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    return filler


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def finals(folder: Path) -> list[str]:
    """Files under ``folder`` other than the filler: what a failed command left under final names."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "filler.bin")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shared(module_dir):
    torch.set_num_threads(1)
    return corpus.make_shared(module_dir("faults"))


@pytest.fixture(scope="module")
def small_export_model(module_dir) -> Path:
    """A model folder for the export cases, untrained: one feature level and one decoder layer (what is
    tested is the write of the graph, and tracing this model costs half the CPU time of the trained one's)."""
    from hdetr.config import load_config
    from hdetr.models import build_model
    from hdetr.weights import save_model

    # One level is stride 32: 192 px inputs give the 36 encoder tokens that two-stage selection needs for
    # the 10 + 20 queries (the export itself traces its own example size).
    cfg = load_config("synthetic_small", [*TINY_MODEL, "model.dec_layers=1", "model.num_feature_levels=1",
                                          "data.train_scales=[192]", "data.val_scale=192", "data.max_size=192"])
    torch.manual_seed(0)
    return save_model(module_dir("export_model") / "model", cfg, build_model(cfg).state_dict())


def _official_pth(shared, folder: Path) -> Path:
    from safetensors.torch import load_file

    path = folder / "official.pth"
    torch.save({"model": load_file(str(shared["model"] / "model.safetensors"))}, path)
    return path


def _images(folder: Path, n: int) -> Path:
    for i in range(n):
        corpus.jpeg(folder / f"img{i:02d}.jpg", 64, 48, (i * 9 % 255, 80, 160))
    return folder


def _train(data, out, *extra):
    return ["train", "synthetic_small", *TINY_MODEL, f"data.train={data}", "train.save_every=1", "train.eval_every=10",
            "train.epochs=3", *extra, "--out", str(out), "--device", "cpu", "--no-progress"]


# -- a full disk --------------------------------------------------------------------------------------

@needs_root
def test_disk_full_during_a_checkpoint_keeps_the_last_one_and_resume_works_after(synth_data, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "320m") as disk:  # the run folder takes ~140 MB (last.pt, prev.pt, model)
        run = disk / "run"
        assert main(_train(synth_data, run, "train.max_iters=2")) == 0
        before = sha(run / "last.pt")
        filler = fill(disk)
        capsys.readouterr()
        code = main(_train(synth_data, run, "train.max_iters=4") + ["--resume"])
        line = one_line(capsys.readouterr().err)
        assert code == 74, line
        assert "disk is full" in line and "--resume" in line, line
        assert sha(run / "last.pt") == before  # the previous checkpoint, intact
        assert load_state(run / "last.pt")["step"] == 2
        assert not temp_files(run / "last.pt") and not list(run.glob(".*.tmp"))
        filler.unlink()  # space is back
        assert main(_train(synth_data, run, "train.max_iters=4") + ["--resume"]) == 0
        assert load_state(run / "last.pt")["step"] == 4


def _disk_full_cases(shared, inputs: Path, out: Path, export_model: Path) -> dict:
    images = _images(inputs / "photos", 3)
    return {
        "eval-report": ["eval", shared["model"], shared["dataset"], "--out", out / "report", "--device", "cpu",
                        "--workers", "0", "--no-progress"],
        "eval-json": ["eval", shared["model"], shared["dataset"], "--out", out / "metrics.json", "--device", "cpu",
                      "--workers", "0", "--no-progress"],
        "predict": ["predict", shared["model"], images, "--out", out / "pred", "--no-progress"],
        "export": ["export", export_model, out / "model.onnx", "--no-verify"],
    }


@needs_root
@pytest.mark.parametrize("verb", ["eval-report", "eval-json", "predict", "export"])
def test_disk_full_gives_one_line_and_no_half_written_output(shared, small_export_model, tmp_path, capsys, verb):
    if verb == "export":
        pytest.importorskip("onnxscript")
    inputs = tmp_path / "in"
    inputs.mkdir()
    with tmpfs(tmp_path / "disk", "16m") as disk:
        argv = [str(a) for a in _disk_full_cases(shared, inputs, disk, small_export_model)[verb]]
        fill(disk)
        capsys.readouterr()
        code = main(argv)
        line = one_line(capsys.readouterr().err)
        assert code == 74 and "disk is full" in line, line
        assert str(disk) in line  # names the file it could not write
        assert finals(disk) == [], finals(disk)


@needs_root
def test_disk_full_while_saving_a_model_folder_leaves_no_file(shared, tmp_path):
    from safetensors.torch import load_file

    from hdetr.weights import load_weights, save_model

    loaded = load_weights(shared["model"])
    state = load_file(str(shared["model"] / "model.safetensors"))
    with tmpfs(tmp_path / "disk", "16m") as disk:  # the weights take ~20 MB
        with pytest.raises(OSError) as info:
            save_model(disk / "model", loaded.cfg, state)
        assert info.value.errno == 28 and info.value.filename == str(disk / "model" / "model.safetensors")
        assert finals(disk) == []


# -- read-only output folders -------------------------------------------------------------------------

def _readonly_cases(shared, synth_data, inputs: Path, ro: Path) -> dict:
    return {
        "train": _train(synth_data, ro / "run", "train.max_iters=1"),
        "eval": ["eval", shared["model"], shared["dataset"], "--out", ro / "report", "--device", "cpu"],
        "eval-json": ["eval", shared["model"], shared["dataset"], "--out", ro / "m.json", "--device", "cpu"],
        "predict": ["predict", shared["model"], _images(inputs / "photos", 1), "--out", ro / "pred"],
        "export": ["export", shared["model"], ro / "sub" / "model.onnx", "--no-verify"],
        "convert": ["convert", _official_pth(shared, inputs), ro / "converted"],
        "demo": ["demo", "--out", ro / "demo", "train.max_iters=1", "--device", "cpu", "--no-progress"],
    }


@needs_root
@pytest.mark.parametrize("verb", ["train", "eval", "eval-json", "predict", "export", "convert", "demo"])
def test_read_only_output_is_refused_before_any_work(shared, synth_data, tmp_path, capsys, verb):
    if verb == "export":
        pytest.importorskip("onnxscript")
    inputs = tmp_path / "in"
    inputs.mkdir()
    with tmpfs(tmp_path / "ro", "1m") as ro:
        argv = [str(a) for a in _readonly_cases(shared, synth_data, inputs, ro)[verb]]
        remount_ro(ro)
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        line = one_line(err)
        assert code == 2 and "read-only" in line and str(ro) in line, line
        assert out == ""  # before any work: no data check, no model loaded, no progress line


# -- SIGTERM ------------------------------------------------------------------------------------------

# `hdetr` whose atomic writes hold their temporary file for a minute after writing it, printing its name.
HELD_WRITES = """
import sys, time
from hdetr import files
write = files.atomic_write
def held(path, fn, previous=None):
    def slow(tmp):
        fn(tmp)
        print("WRITING", path, flush=True)
        time.sleep(60)
    write(path, slow, previous)
files.atomic_write = held
from hdetr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _terminated_mid_write(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", HELD_WRITES, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        for line in proc.stdout:
            if line.startswith("WRITING "):
                target = line.split(" ", 1)[1].strip()
                break
        else:
            raise AssertionError(f"no write began: {proc.wait()} {proc.stderr.read()}")
        assert temp_files(Path(target)), "the temporary file of the write should exist now"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, target, proc.stderr.read()


@pytest.mark.parametrize("verb", ["eval", "predict", "export"])
def test_sigterm_during_a_write_stops_cleanly_and_leaves_no_half_file(shared, small_export_model, tmp_path, verb):
    if verb == "export":
        pytest.importorskip("onnxscript")
    out = tmp_path / "out"
    argv = {
        "eval": ["eval", shared["model"], shared["dataset"], "--out", out / "metrics.json", "--device", "cpu",
                 "--workers", "0", "--no-progress"],
        "predict": ["predict", shared["model"], _images(tmp_path / "photos", 4), "--out", out, "--no-progress"],
        "export": ["export", small_export_model, out / "model.onnx", "--no-verify"],
    }[verb]
    code, target, err = _terminated_mid_write(argv, tmp_path)
    assert code == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"hdetr {verb}: stopped by SIGTERM", err
    assert not Path(target).exists(), f"{target} was left under its final name"
    assert not temp_files(Path(target)), "the temporary file was left behind"
