"""The benchmark tooling's tests share the test workers' thread setting with tests/ (tests/support)."""

from support.worker_threads import worker_threads  # noqa: F401  (autouse: each worker's share of the cores)
