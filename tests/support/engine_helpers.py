"""Shared pieces of the engine tests: a tiny model config and a tiny synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import torch

from support.tiny import TRAINING

TINY_MODEL = TRAINING  # the tiny model trained on images (support.tiny)


def tiny_overrides(data: Path, *extra: str) -> list[str]:
    return [*TINY_MODEL, f"data.train={data}", *extra]


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict, exact: bool = True, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), f"{k} differs (max |diff| {(a[k].float() - b[k].float()).abs().max()})"
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m: f"{k}: {m}")


def assert_keeps_foreign_files(command: list[str], out: Path, files, capsys) -> None:
    """For each (name, content) of ``files``, put in ``out`` as if by the user: ``hdetr COMMAND`` refuses
    (exit 2, naming the file) and leaves the file as it was."""
    from hdetr.cli import main

    for name, content in files:
        (out / name).write_bytes(content)
        assert main(command) == 2
        err = capsys.readouterr().err
        assert name in err and "not written by hdetr" in err
        assert (out / name).read_bytes() == content
        (out / name).unlink()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world_size: int, port: int, overrides: list[str], out: str) -> None:
    """One rank of a CPU (gloo) DDP run, as torchrun would start it."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from hdetr.config import load_config
    from hdetr.engine import distributed
    from hdetr.engine.train import train

    try:
        train(load_config(None, overrides), out, device="cpu", progress=False)
    finally:
        distributed.cleanup()
