"""Shared pieces of the engine tests: a tiny model config and a tiny synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import torch

# A model small enough that a training step takes well under a second on one CPU core.
TINY_MODEL = [
    "model.backbone=tiny",
    "model.enc_layers=1",
    "model.dec_layers=2",
    "model.dim_feedforward=64",
    "model.nheads=4",
    "model.num_queries=10",
    "model.topk=20",
    "hybrid.scheme=branch",
    "hybrid.num_queries_one2many=20",
    "hybrid.k=2",
    "train.lr_backbone=2e-4",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.log_every=1",
    "data.train_scales=[48,56,64]",
    "data.max_size=80",
    "data.val_scale=64",
]


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
