"""The suite's file order (support/file_order.py): longest recorded file first, a file's tests together
and in their order, a new file with a slow test ahead of the unrecorded rest; the recorder's sums, kept
for the files a partial run did not run."""

from __future__ import annotations

import json
from types import SimpleNamespace

from support.file_order import DurationRecorder, order_files, read_durations


class Item:
    def __init__(self, nodeid: str, slow: bool = False):
        self.nodeid, self.slow = nodeid, slow

    def get_closest_marker(self, name):
        return object() if name == "slow" and self.slow else None


def test_longest_file_first_and_each_file_kept_together_in_order():
    items = [Item("a.py::t1"), Item("a.py::t2"), Item("b.py::t1"), Item("c.py::t1"), Item("c.py::t2", slow=True),
             Item("d.py::t1"), Item("e.py::t1"), Item("e.py::t2")]
    order_files(items, {"a.py": 5.0, "b.py": 300.0, "e.py": 40.0})
    assert [i.nodeid for i in items] == ["b.py::t1", "c.py::t1", "c.py::t2", "e.py::t1", "e.py::t2",
                                         "a.py::t1", "a.py::t2", "d.py::t1"]


def test_recorder_sums_setup_call_and_teardown_per_file(tmp_path):
    out = tmp_path / "durations.json"
    rec = DurationRecorder(str(out))
    for nodeid, d in [("x.py::a", 1.25), ("x.py::a", 2.0), ("y.py::b", 9.0), ("x.py::c", 0.5)]:
        rec.pytest_runtest_logreport(SimpleNamespace(nodeid=nodeid, duration=d))
    rec.pytest_sessionfinish(None)
    assert list(json.loads(out.read_text()).items()) == [("y.py", 9.0), ("x.py", 3.8)]
    assert read_durations(out) == {"y.py": 9.0, "x.py": 3.8}
    again = DurationRecorder(str(out))  # a partial run: x.py only
    again.pytest_runtest_logreport(SimpleNamespace(nodeid="x.py::a", duration=20.0))
    again.pytest_sessionfinish(None)
    assert read_durations(out) == {"x.py": 20.0, "y.py": 9.0}
    out.write_text("not json")
    assert read_durations(out) == {}  # a damaged record only loses the order
