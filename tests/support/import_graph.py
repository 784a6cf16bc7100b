"""The import graph of a package, read from its sources with ``ast`` (nothing is imported).

Every import statement counts, at module level or inside a function. An edge goes from the importing
module to what runs when the import executes:

- ``import pkg.sub`` and ``from pkg.sub import name`` run ``pkg.sub`` and, before it, the ``__init__``
  of every package on the way (``pkg``);
- ``from pkg import name`` runs ``pkg.name`` when that is a module, else ``pkg``'s ``__init__``
  (where ``name`` is defined or re-exported);
- relative imports are resolved against the importing module's package.

A package's own ``__init__`` running is no edge for the modules inside that package (Python has run
it before any of them).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ImportGraph:
    modules: dict[str, Path]  # module name -> file
    # importer -> imported -> [(line, inside a function)]
    edges: dict[str, dict[str, list[tuple[int, bool]]]] = field(default_factory=dict)

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (each a cycle or several), sorted."""
        import numpy as np
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        names = sorted(self.modules)
        index = {m: i for i, m in enumerate(names)}
        rows = [index[a] for a, targets in self.edges.items() for b in targets]
        cols = [index[b] for a, targets in self.edges.items() for b in targets]
        matrix = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
        _, labels = connected_components(matrix, directed=True, connection="strong")
        groups: dict[int, list[str]] = {}
        for name, label in zip(names, labels):
            groups.setdefault(int(label), []).append(name)
        return sorted(g for g in groups.values() if len(g) > 1)

    def describe(self, component: list[str]) -> list[str]:
        """The edges inside a component, one line each: ``a -> b (line N, in a function)``."""
        inside = set(component)
        return [f"{a} -> {b} (line {line}{', in a function' if in_function else ''})"
                for a in component for b, where in sorted(self.edges.get(a, {}).items()) if b in inside
                for line, in_function in where[:1]]


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _function_imports(tree: ast.AST) -> set[int]:
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inside


def _imported(module: str, is_package: bool, node: ast.AST, modules: dict) -> list[str]:
    """The dotted names an import statement asks for (a module, or a package plus a name)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = module if is_package else module.rpartition(".")[0]
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def build_graph(root: Path) -> ImportGraph:
    """The import graph among the modules of the package at ``root`` (imports of other packages are left out)."""
    root = Path(root)
    top = root.name
    modules = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph = ImportGraph(modules)
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        in_function = _function_imports(tree)
        targets = graph.edges.setdefault(module, {})
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(module, path.name == "__init__.py", node, modules):
                if name.split(".")[0] != top:
                    continue
                while name not in modules and "." in name:  # an attribute of a module: the module
                    name = name.rpartition(".")[0]
                parts = name.split(".")
                ran = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]  # every __init__ on the way, then it
                for target in ran:
                    if target in modules and target != module and not module.startswith(target + "."):
                        targets.setdefault(target, []).append((node.lineno, id(node) in in_function))
    return graph
