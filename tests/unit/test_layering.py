"""Imports inside hdetr point one way: down the table of layers below (docs/architecture.md).

A module may import from its own layer or a lower one (the package's ``__init__`` is the public
facade: it re-exports from any layer and is not checked as an importer; its ``__version__`` is
foundation); an import from a higher layer fails this test
unless it is listed, with its reason, in ALLOWED_UPWARD. Imports are read with ``ast`` (nothing is
imported), including the ones inside functions. ``from hdetr.pkg import name`` counts as an import of
the submodule that defines ``name`` when the package re-exports it (e.g. ``hdetr.checkpoint`` ->
``hdetr.checkpoint.files``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.paths import REPO

ROOT = REPO / "hdetr"

# Lowest first. A module belongs to the longest prefix listed ("hdetr" alone is the package's __init__).
LAYERS = [
    ("foundation", ["hdetr", "hdetr.errors", "hdetr.config", "hdetr.hybrid", "hdetr.graph_metadata", "hdetr.threads",
                    "hdetr.allocator", "hdetr.files", "hdetr.checkpoint.files"]),
    ("data and models", ["hdetr.data", "hdetr.models"]),
    ("matching, losses, weights", ["hdetr.matcher", "hdetr.losses", "hdetr.postprocess", "hdetr.checkpoint"]),
    ("inference", ["hdetr.api", "hdetr.runtime", "hdetr.draw", "hdetr.tiling", "hdetr.video", "hdetr.outputs"]),
    ("training", ["hdetr.engine"]),
    ("export, serving, benchmarks", ["hdetr.export", "hdetr.serve", "hdetr.bench"]),
    ("commands", ["hdetr.commands", "hdetr.cli"]),
]

ALLOWED_UPWARD = {
    ("hdetr.config", "hdetr.models.backbone"):
        "validation asks the backbone registry which names exist (a lazy import; it builds nothing)",
}


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            matches = module == p if p == "hdetr" else (module == p or module.startswith(p + "."))
            if matches and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _reexports(package: str) -> dict[str, str]:
    """name -> defining submodule, for the ``from .sub import name`` lines of a package's __init__."""
    init = ROOT.parent.joinpath(*package.split("."), "__init__.py")
    if not init.exists():
        return {}
    out = {}
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{package}.{node.module}"
    return out


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported hdetr module) for every import in ``path``."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "hdetr"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "hdetr":
                continue
            exported = _reexports(target)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if ROOT.parent.joinpath(*sub.split(".")).with_suffix(".py").exists() or \
                        ROOT.parent.joinpath(*sub.split(".")).is_dir():
                    found.append((node.lineno, sub))  # a submodule
                else:
                    found.append((node.lineno, exported.get(alias.name, target)))
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        if module == "hdetr":
            continue  # the facade
        own = layer_of(module)
        if own is None:
            bad.append(f"{module}: not in the layer table of tests/unit/test_layering.py (add it to its layer)")
            continue
        for line, target in imports(path):
            other = layer_of(target)
            if other is None or other <= own:
                continue
            if any(module.startswith(a) and target.startswith(b) for a, b in ALLOWED_UPWARD):
                continue
            bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {module} ({LAYERS[own][0]}) imports {target} "
                       f"({LAYERS[other][0]}), a higher layer")
    return sorted(set(bad))


def test_imports_point_down_the_layers():
    assert violations() == []


def test_the_package_imports_itself_relatively():
    """Inside hdetr, imports of hdetr are relative (except in docstrings' examples, which ast does not see)."""
    absolute = [f"{p.relative_to(ROOT.parent)}:{n.lineno}" for p in sorted(ROOT.rglob("*.py"))
                for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").split(".")[0] == "hdetr"]
    assert absolute == []


@pytest.mark.parametrize("importer,target,expected", [
    ("hdetr.api", "hdetr.engine.weights", False),
    ("hdetr.runtime", "hdetr.export", False),
    ("hdetr.engine.train", "hdetr.models.detector", True),
    ("hdetr.models.swin", "hdetr.checkpoint.files", True),
    ("hdetr.models.swin", "hdetr.checkpoint.load", False),
    ("hdetr.config", "hdetr.files", True),
])
def test_the_table_orders_the_known_directions(importer, target, expected):
    assert (layer_of(target) <= layer_of(importer)) is expected
