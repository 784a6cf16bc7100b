"""The order test files start in: the longest first, by the durations recorded in tests/durations.json.

``make test`` hands whole files to its parallel workers (``--dist loadfile``) in collection order. When a
long file starts last, one worker runs it alone while the others idle; starting the longest files first
lets the short ones fill the gaps at the end (longest-processing-time-first scheduling). The durations
only order the files: a stale or missing entry makes the suite slower, never wrong. ``make
test-durations`` runs the suite and records them again.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from .paths import TESTS

DURATIONS = TESTS / "durations.json"
RECORD_ENV = "HDETR_RECORD_TEST_DURATIONS"  # a path: the suite writes each file's seconds there
# A file missing from the record (a new one): placed by its markers, a file with a slow test first.
UNKNOWN_SLOW_S = 60.0


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def read_durations(path: Path = DURATIONS) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def order_files(items: list, durations: dict[str, float]) -> None:
    """Sort ``items`` in place, longest file first; a file's tests stay together and in their order."""
    slow_files = {file_of(it.nodeid) for it in items if it.get_closest_marker("slow") is not None}

    def seconds(item) -> float:
        f = file_of(item.nodeid)
        return durations.get(f, UNKNOWN_SLOW_S if f in slow_files else 0.0)

    items.sort(key=lambda it: -seconds(it))  # stable: equal keys keep the collection order


class DurationRecorder:
    """Sums setup, call and teardown time per file (in the process that receives every report: the
    controller under xdist) and writes them, longest first, at the end of the session. Files this
    session did not run keep their recorded time, so a partial run does not drop the others."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report) -> None:
        self.seconds[file_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session) -> None:
        merged = {**read_durations(self.path), **{f: round(s, 1) for f, s in self.seconds.items()}}
        ordered = dict(sorted(merged.items(), key=lambda kv: -kv[1]))
        self.path.write_text(json.dumps(ordered, indent=1) + "\n")


def recorder_from_env(config) -> DurationRecorder | None:
    path = os.environ.get(RECORD_ENV)
    if not path or hasattr(config, "workerinput"):  # workers report to the controller, which records
        return None
    return DurationRecorder(path)
