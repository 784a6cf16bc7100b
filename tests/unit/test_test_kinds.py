"""The table of slow / process-level tests (tests/support/kinds.py) names tests that exist."""

from __future__ import annotations

import ast

import pytest

from support.kinds import PROCESS, SLOW
from support.paths import TESTS


@pytest.mark.parametrize("key", sorted(PROCESS | SLOW))
def test_every_entry_names_a_test_module_or_function(key):
    module, _, name = key.partition("::")
    # Keys are file stems: one test module of that name in one of the folders under tests/ (or in
    # benchmarks/tests, whose tests mark themselves: tests/conftest.py does not reach them).
    paths = sorted(TESTS.glob(f"*/{module}.py")) + sorted((TESTS.parent / "benchmarks" / "tests").glob(f"{module}.py"))
    assert len(paths) == 1, f"{key}: {len(paths)} files tests/*/{module}.py: {[str(p) for p in paths]}"
    if name:
        functions = {n.name for n in ast.walk(ast.parse(paths[0].read_text())) if isinstance(n, ast.FunctionDef)}
        assert name in functions, f"{key}: no function {name} in {paths[0].relative_to(TESTS.parent)}"
