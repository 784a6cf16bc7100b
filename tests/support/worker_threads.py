"""torch's intra-op threads in a test worker: its share of the cores.

``make test`` runs one pytest-xdist worker per core. If each worker also kept torch's default of one
thread per core, the workers' thread pools would oversubscribe the cores and spend CPU time waiting on each other (measured in
docs/architecture.md, "Tests").
"""

from __future__ import annotations

import os

import pytest


def share_of_cores() -> int | None:
    """Cores per xdist worker (at least 1), or None outside xdist (torch's default is then right)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


@pytest.fixture(scope="module", autouse=True)
def worker_threads():
    """At the start of every test file, the worker's share (a file that needs another count sets it in
    its own fixtures, which run after this one; a test that sets it affects only the rest of its file)."""
    threads = share_of_cores()
    if threads is not None:
        import torch  # here, not at import: collecting the fast tests must not need torch

        torch.set_num_threads(threads)
    yield
