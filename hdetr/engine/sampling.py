"""Deterministic batches: which images, in which order, with which augmentation -- per (seed, epoch).

Everything random about the data is a pure function of ``(seed, epoch, position)``:

- the shuffle of an epoch comes from a generator seeded with ``seed + epoch`` (as DistributedSampler);
- the augmentation of an image is drawn from a generator seeded with ``(seed, epoch, index)``, not from
  whichever worker process happened to load it.

So a run resumed in the middle of an epoch just starts the batch sampler at the next batch (nothing is
loaded and thrown away), and the same image gets the same crop with 0 or 8 workers, on 1 or 8 ranks.
"""

from __future__ import annotations

import random
import signal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..threads import one_thread


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class SeededSamples(Dataset):
    """Wraps a dataset; indexed with ``(index, seed)`` pairs, it loads ``index`` under ``seed``.

    The transforms draw from torch's global generator; ``fork_rng`` gives them their own stream and
    puts the caller's state back, so loading in the main process (num_workers=0) does not disturb the
    model's random numbers (dropout) either.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]), one_thread():
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochBatches(Sampler):
    """Per-rank batches of ``(index, seed)`` pairs for one epoch at a time.

    Ranks take interleaved slices of one shared permutation, so the first global batch of a
    2-rank x batch-1 run holds the same images as the first batch of a 1-rank x batch-2 run.
    Training drops the incomplete last batch (every rank must take the same number of steps);
    evaluation keeps it and does not pad (padding would count an image twice).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True):
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Next iteration yields ``epoch``'s batches from ``start_batch`` on (to resume mid-epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.drop_last:
            per_rank = self.n // self.world_size
            order = order[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def batches(self) -> list[list[int]]:
        idx = self._indices()
        out = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self):
        for batch in self.batches()[self.start_batch :]:
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in batch]


def worker_init(worker_id: int) -> None:
    """DataLoader workers: derive numpy/python seeds from torch's per-worker seed (for user transforms)."""
    # Ctrl-C reaches the whole process group: the main process saves and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The CLI's SIGTERM handler (hdetr.cli.terminate_as_interrupt) is inherited through fork; a worker
    # told to stop just stops, and the main process answers for the run.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All generator states, as tensors and plain Python values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
