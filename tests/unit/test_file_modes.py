"""Files hdetr writes atomically get the user's umask, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hdetr.files import atomic_write, temp_files


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0o022)
    os.umask(before)
    yield set_mask
    os.umask(before)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "metrics.json"
    atomic_write(path, lambda p: Path(p).write_text("{}\n"))
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text() == "{}\n" and temp_files(path) == []


def test_replacing_a_file_keeps_the_previous_version(tmp_path, umask):
    umask(0o022)
    path, previous = tmp_path / "last.pt", tmp_path / "last.pt.prev"
    atomic_write(path, lambda p: Path(p).write_bytes(b"1"))
    atomic_write(path, lambda p: Path(p).write_bytes(b"2"), previous=previous)
    assert (path.read_bytes(), previous.read_bytes()) == (b"2", b"1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 == stat.S_IMODE(previous.stat().st_mode)


def test_a_writer_that_replaces_the_file_gets_the_umask_too(tmp_path, umask):
    """safetensors' save_file writes its own file (0600) in place of the temporary one."""
    import torch
    from safetensors.torch import load_file, save_file

    umask(0o022)
    path = tmp_path / "model.safetensors"
    atomic_write(path, lambda p: save_file({"w": torch.ones(2)}, p))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert torch.equal(load_file(path)["w"], torch.ones(2))
