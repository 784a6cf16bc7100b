"""Batches are a pure function of (seed, epoch, rank): what exact resume and DDP rely on."""

from __future__ import annotations

import torch

from hdetr.engine.sampling import EpochBatches, SeededSamples, rng_state, sample_seed, set_rng_state


def _indices(batches):
    return [[i for i, _ in b] for b in batches]


def test_start_batch_skips_exactly_the_done_batches():
    s = EpochBatches(23, 3, seed=7)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start_batch=5)
    assert list(s) == full[5:]
    assert len(full) == 7  # 23 // 3, incomplete batch dropped


def test_epochs_shuffle_differently_and_reproducibly():
    s = EpochBatches(16, 4, seed=0)
    s.set_epoch(0)
    e0 = _indices(s)
    s.set_epoch(1)
    e1 = _indices(s)
    assert e0 != e1 and sorted(sum(e0, [])) == list(range(16))
    s.set_epoch(0)
    assert _indices(s) == e0


def test_ranks_split_one_global_order():
    one = EpochBatches(12, 2, seed=3)
    ranks = [EpochBatches(12, 1, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in (one, *ranks):
        s.set_epoch(2)
    single, r0, r1 = (list(s) for s in (one, *ranks))
    # Step k of the 2-rank run holds the images of step k of the 1-rank run, with the same seeds.
    for big, a, b in zip(single, r0, r1):
        assert big == a + b


def test_eval_batches_cover_every_image_once():
    parts = [EpochBatches(11, 2, seed=0, rank=r, world_size=3, shuffle=False, drop_last=False) for r in range(3)]
    seen = sorted(i for p in parts for b in p for i, _ in b)
    assert seen == list(range(11))


def test_seeded_samples_leave_the_callers_generator_alone():
    class Draw(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3)

    ds = SeededSamples(Draw())
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    a = ds[(1, sample_seed(0, 0, 1))]
    b = ds[(1, sample_seed(0, 0, 1))]
    assert torch.equal(a, b)  # same (index, seed): same augmentation
    assert not torch.equal(a, ds[(1, sample_seed(0, 1, 1))])  # next epoch: a new draw
    assert torch.equal(torch.rand(2), expected)  # the global stream did not move


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_main_process_loading_runs_on_one_thread():
    # Per-image work is too small to share between threads; the caller's thread count comes back.
    import torch

    from hdetr.data.collate import collate
    from hdetr.engine.sampling import SeededSamples

    seen = []

    class Recorder(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            seen.append(torch.get_num_threads())
            return torch.zeros(3, 4, 4), {}

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        item = SeededSamples(Recorder())[(0, 7)]
        collate([item, item])
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
