"""A function of hdetr over 60 lines says in its docstring why it is kept whole ("Kept whole: ...");
otherwise it is split into named steps."""

from __future__ import annotations

import ast

from support.paths import REPO

LIMIT = 60


def test_long_functions_say_why_they_are_kept_whole():
    unexplained = []
    for path in sorted((REPO / "hdetr").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LIMIT:
                if "Kept whole:" not in (ast.get_docstring(node) or ""):
                    unexplained.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} "
                                       f"({node.end_lineno - node.lineno + 1} lines)")
    assert unexplained == [], "split these, or say why they are kept whole:\n" + "\n".join(unexplained)
