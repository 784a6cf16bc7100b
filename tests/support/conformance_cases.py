"""Which conformance cases there are, and the ``case`` fixture that runs each of them once per module.

A case is a folder made by the official H-Deformable-DETR with a manifest.json; its ``kind`` routes it to
the test module of that kind (test_conformance.py for "step", which also fails on a kind no module runs;
test_conformance_<kind>.py for the others). Cases come from tests/fixtures/conformance, or from
$HDETR_CONFORMANCE_DIR: a folder of cases or one case folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest
import torch

from support import paths

FIXTURES = paths.FIXTURES / "conformance"
# What a case checks (manifest "kind"): one training step + evaluation of the detector ("step"), several
# optimizer steps ("trajectory"), or the backbone's multi-scale features and masks ("backbone").
KINDS = ("step", "trajectory", "backbone")
# The attention paths every detector case runs with; HDETR_ATTENTION_IMPL=fast or =reference keeps one.
IMPLS = [i for i in ("fast", "reference") if os.environ.get("HDETR_ATTENTION_IMPL", i) == i]


def case_kind(path: Path) -> str:
    return json.loads((Path(path) / "manifest.json").read_text()).get("kind", "step")


def case_dirs(kind: str | None = None) -> list[Path]:
    """Case folders under HDETR_CONFORMANCE_DIR (a folder of cases or one case folder), of ``kind`` if given."""
    root = Path(os.environ.get("HDETR_CONFORMANCE_DIR", FIXTURES))
    if (root / "manifest.json").exists():
        dirs = [root]
    else:
        dirs = sorted(p.parent for p in root.glob("*/manifest.json"))
    return [d for d in dirs if kind is None or case_kind(d) == kind]


def case_fixture(kind: str, run: Callable[[Path, str], object]):
    """A module-scoped fixture giving ``run(case_folder, attention_impl)`` for every case of ``kind`` and
    every path of IMPLS (test ids ``CASE-IMPL``); assign it to ``case`` in the test module.

    Module scope: a case runs once, and every test of the module checks one part of its result.
    """
    params = [(c, impl) for c in case_dirs(kind) for impl in IMPLS]

    @pytest.fixture(scope="module", params=params, ids=[f"{c.name}-{impl}" for c, impl in params])
    def case(request):
        torch.set_num_threads(2)
        path, impl = request.param
        return run(path, impl)

    return case
