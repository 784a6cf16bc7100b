"""Benchmark tooling beside the package, run from a clone: ``python -m benchmarks.NAME``. Uses hdetr's
public modules only."""
