"""The table of slow / process-level tests (tests/support/kinds.py) names tests that exist."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.kinds import PROCESS, SLOW

TESTS = Path(__file__).parent


@pytest.mark.parametrize("key", sorted(PROCESS | SLOW))
def test_every_entry_names_a_test_module_or_function(key):
    module, _, name = key.partition("::")
    path = TESTS / f"{module}.py"
    assert path.exists(), f"{key}: no tests/{module}.py"
    if name:
        functions = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        assert name in functions, f"{key}: no function {name} in tests/{module}.py"
