"""The bad-input corpus (tests/support/bad_input_corpus.py) as a test: every case must end in a clear error or be
handled: no traceback, no hang, nothing unsafe (an input changed), no silent acceptance outside
ACCEPTED_BY_DESIGN. Cases known to fail are listed in LEFT with the reason and run as strict xfails.

The table of kinds: HDETR_CORPUS_JSON=table.json pytest tests/integration/test_bad_input_corpus.py (or run
``python tests/support/bad_input_corpus.py --json table.json``).
"""

from __future__ import annotations

import json
import os
import re

import pytest

from support import bad_input_corpus as corpus

CASES = corpus.all_cases()
RESULTS: dict = {}
# The cases that train, run an eval with worker processes or start a subprocess take seconds each: marked
# slow, so that `make test-fast` runs the rest of the corpus (most of it, well under a minute).
SLOW_PREFIXES = ("train-", "worker-", "ambiguous-train-", "empty-train-", "out-train-", "out-demo-", "model-resume-",
                 "fault-readonly-export", "out-export-", "model-weights-nan-export")


def _param(case):
    slow = case.subprocess or case.id.startswith(SLOW_PREFIXES)
    return pytest.param(case, id=case.id, marks=[pytest.mark.slow] if slow else [])

# Still wrong after the fixes, with the reason (docs/reliability.md, "What is left").
LEFT: dict[str, str] = {}


@pytest.fixture(scope="module")
def shared(module_dir):
    import torch

    torch.set_num_threads(1)
    return corpus.make_shared(module_dir("corpus_shared"))


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case, shared, tmp_path, request):
    if case.id in LEFT:
        request.applymarker(pytest.mark.xfail(reason=LEFT[case.id], strict=True))
    kind, res, why = corpus.run_case(case, tmp_path / re.sub(r"[^\w.-]", "_", case.id), shared)
    RESULTS[case.id] = (kind, why)
    assert kind in ("clear", "handled"), f"{case.id}: {kind}: {why}\nstdout: {res.out[-800:]}\nstderr: {res.err[-800:]}"


def teardown_module(module):
    if not RESULTS:
        return
    table = corpus.table(RESULTS)
    print("\nbad-input corpus:", json.dumps(table["kinds"]))
    if os.environ.get("HDETR_CORPUS_JSON"):
        with open(os.environ["HDETR_CORPUS_JSON"], "w") as f:
            json.dump(table, f, indent=1)
