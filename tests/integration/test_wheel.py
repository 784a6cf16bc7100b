"""`pip install .` (not editable) gives a working CLI: a wheel is built from the package's files and
installed into a fresh venv, which borrows the installed dependencies (torch, ...) instead of downloading
them; the installed `hdetr` then runs from the venv with its configs, web assets and key lists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from support.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.process]


def run(cmd: list, cwd: Path, env: dict) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    # The build reads a copy (setuptools writes build/ and *.egg-info beside the sources).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "hdetr", src / "hdetr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"  # never the network
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, src],
        tmp_path, env)
    (wheel,) = wheels.glob("hdetr-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip())
    # The dependencies of this environment, appended after the venv's own packages. A plain path line:
    # the .pth files there (this checkout's editable install of hdetr) are not run.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], tmp_path, env)

    where = run([python, "-c", "import hdetr; print(hdetr.__file__)"], tmp_path, env).strip()
    assert Path(where).is_relative_to(site), where
    hdetr = venv / "bin" / "hdetr"
    assert run([hdetr, "--version"], tmp_path, env).strip() == "hdetr 0.1.0"
    assert "--out" in run([hdetr, "demo", "--help"], tmp_path, env)
    assert "r50_hybrid_branch_36ep" in run([hdetr, "models"], tmp_path, {**env, "HDETR_HOME": str(tmp_path / "c")})
    # The package data: every preset, the serve page's assets, the official key lists.
    check = ("from hdetr.config import load_config, PRESET_DIR; from hdetr.weights.zoo import expected_keys; "
             "from hdetr.model_zoo import ZOO; import hdetr.serve, pathlib; "
             "[load_config(p.stem) for p in PRESET_DIR.glob('[!_]*.yaml')]; "
             "[expected_keys(e) for e in ZOO.values()]; "
             "static = pathlib.Path(hdetr.serve.__file__).parent / 'static'; "
             "print(len(list(PRESET_DIR.glob('*.yaml'))), sorted(p.name for p in static.iterdir()))")
    presets, static = run([python, "-c", check], tmp_path, env).strip().split(" ", 1)
    assert int(presets) == len(list((REPO / "hdetr" / "configs").glob("*.yaml")))
    assert static == str(sorted(p.name for p in (REPO / "hdetr" / "serve" / "static").iterdir()))
