"""Imports inside hdetr point one way: down the table of layers below (docs/architecture.md).

A module may import from its own layer or a lower one (the package's ``__init__`` is the public
facade: it re-exports from any layer and is not checked as an importer; its ``__version__`` is
foundation); an import from a higher layer fails this test. The imports are the edges of
``support.import_graph`` (every import statement, inside functions too; ``from hdetr.pkg import name``
is an import of ``hdetr.pkg.name`` when that is a module, else of the package's ``__init__``, which is
what runs). tests/unit/test_import_cycles.py checks the same graph for cycles.
"""

from __future__ import annotations

import ast

import pytest

from support.import_graph import build_graph
from support.paths import REPO

ROOT = REPO / "hdetr"

# Lowest first. A module belongs to the longest prefix listed ("hdetr" alone is the package's __init__).
LAYERS = [
    ("foundation", ["hdetr", "hdetr.errors", "hdetr.config", "hdetr.hybrid", "hdetr.graph_metadata", "hdetr.threads",
                    "hdetr.devices", "hdetr.allocator", "hdetr.files", "hdetr.safe_load", "hdetr.backbones",
                    "hdetr.run_folder", "hdetr.model_zoo"]),
    ("data and models", ["hdetr.data", "hdetr.models"]),
    ("matching, losses, weights", ["hdetr.matcher", "hdetr.losses", "hdetr.postprocess", "hdetr.weights"]),
    ("inference", ["hdetr.api", "hdetr.runtime", "hdetr.draw", "hdetr.tiling", "hdetr.video", "hdetr.outputs"]),
    ("training", ["hdetr.engine"]),
    ("export, serving", ["hdetr.export", "hdetr.serve"]),
    ("commands", ["hdetr.commands", "hdetr.cli"]),
]

def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            matches = module == p if p == "hdetr" else (module == p or module.startswith(p + "."))
            if matches and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def violations() -> list[str]:
    graph = build_graph(ROOT)
    bad = []
    for module, path in graph.modules.items():
        if module == "hdetr":
            continue  # the facade
        own = layer_of(module)
        if own is None:
            bad.append(f"{module}: not in the layer table of tests/unit/test_layering.py (add it to its layer)")
            continue
        for target, where in graph.edges.get(module, {}).items():
            other = layer_of(target)
            if other is None or other <= own:
                continue
            bad.append(f"{path.relative_to(ROOT.parent)}:{where[0][0]}: {module} ({LAYERS[own][0]}) imports {target} "
                       f"({LAYERS[other][0]}), a higher layer")
    return sorted(bad)


def test_imports_point_down_the_layers():
    assert violations() == []


def test_the_package_imports_itself_relatively():
    """Inside hdetr, imports of hdetr are relative (except in docstrings' examples, which ast does not see)."""
    absolute = [f"{p.relative_to(ROOT.parent)}:{n.lineno}" for p in sorted(ROOT.rglob("*.py"))
                for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").split(".")[0] == "hdetr"]
    assert absolute == []


@pytest.mark.parametrize("importer,target,expected", [
    ("hdetr.api", "hdetr.engine.train", False),
    ("hdetr.runtime", "hdetr.export", False),
    ("hdetr.engine.train", "hdetr.models.detector", True),
    ("hdetr.models.swin", "hdetr.safe_load", True),
    ("hdetr.config", "hdetr.backbones", True),
    ("hdetr.config", "hdetr.models.backbone", False),
    ("hdetr.models.swin", "hdetr.weights.load", False),
    ("hdetr.config", "hdetr.files", True),
])
def test_the_table_orders_the_known_directions(importer, target, expected):
    assert (layer_of(target) <= layer_of(importer)) is expected


def test_the_package_does_not_reach_into_the_benchmark_tooling():
    """hdetr/ holds the product: it imports nothing from benchmarks/ (the tooling beside it), names no
    file under it and runs no git (docs/architecture.md)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "benchmarks" for a in node.names):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: imports benchmarks")
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "benchmarks":
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: imports benchmarks")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value.startswith("benchmarks/") or node.value == "git"):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {node.value!r}")
    assert found == []
