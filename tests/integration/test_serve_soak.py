"""benchmarks/serve_soak.py, briefly: it starts the server, sends every kind of request, and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.paths import REPO

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'hdetr[serve]'")
pytestmark = [pytest.mark.slow, pytest.mark.process]


def test_a_short_soak_has_no_crash_and_no_unexpected_answer(tmp_path):
    out = tmp_path / "soak.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_soak.py"), "--minutes", "0.4", "--clients", "3",
                    "--out", str(out)], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["crashes"] == 0 and result["server_tracebacks"] == 0 and result["unexpected"] == {}
    assert result["server_exit_code"] == 143  # stopped by SIGTERM at the end, cleanly
    assert result["good_latency_ms"]["n"] > 0 and result["good_latency_ms"]["p99"] >= result["good_latency_ms"]["p50"]
    assert result["answers_by_kind"]["good"].get("200", 0) > 0
    assert result["server_rss_mib"]["start"] > 0 and result["server_rss_mib"]["end"] > 0
