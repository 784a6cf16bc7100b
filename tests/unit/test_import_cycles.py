"""No import cycle in hdetr/, counting every import statement (inside functions too).

A cycle makes the import order decide what works, and "everything reaches everything" means a change
anywhere can break an import anywhere. Shared pieces move down a layer instead (docs/architecture.md).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from support.import_graph import build_graph
from support.paths import REPO


def _report(graph) -> str:
    return "\n".join("import cycle among " + ", ".join(c) + ":\n  " + "\n  ".join(graph.describe(c))
                     for c in graph.cycles())


def test_hdetr_has_no_import_cycle():
    graph = build_graph(REPO / "hdetr")
    assert len(graph.modules) > 50
    assert graph.cycles() == [], _report(graph)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "config.py": "def check():\n    from .models.backbone import NAMES\n",
        "models/__init__.py": "",
        "models/backbone.py": "from ..config import check\nNAMES = ()\n",
    })
    graph = build_graph(root)
    assert graph.cycles() == [["pkg.config", "pkg.models.backbone"]]
    assert "pkg.config -> pkg.models.backbone (line 2, in a function)" in _report(graph)


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    # `from ..checkpoint import x` runs checkpoint/__init__, which imports load, which imports models.
    root = _package(tmp_path, {
        "__init__.py": "",
        "checkpoint/__init__.py": "from .load import load_weights\nfrom .files import safe_load\n",
        "checkpoint/load.py": "def load_weights():\n    from ..models import build\n",
        "checkpoint/files.py": "def safe_load(): pass\n",
        "models/__init__.py": "def build():\n    from ..checkpoint import safe_load\n",
    })
    assert build_graph(root).cycles() == [["pkg.checkpoint", "pkg.checkpoint.load", "pkg.models"]]


def test_importing_a_submodule_runs_its_package_init(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "data/__init__.py": "from .coco import Dataset\n",
        "data/coco.py": "Dataset = object\n",
        "config.py": "from .data.images import load\n",
        "data/images.py": "from ..config import x\n",
    })
    graph = build_graph(root)
    assert graph.edges["pkg.config"].keys() == {"pkg.data", "pkg.data.images"}
    assert graph.cycles() == [["pkg.config", "pkg.data.images"]]


def test_a_package_importing_its_own_modules_is_no_cycle(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "models/__init__.py": "from .detector import build\n",
        "models/detector.py": "from .backbone import Backbone\ndef build(): pass\n",
        "models/backbone.py": "Backbone = object\n",
    })
    assert build_graph(root).cycles() == []
