"""Errors raised in child processes (DataLoader workers) reach the user as if the main process had raised
them: the same one-line message and exit status, no worker traceback unless --debug."""

from __future__ import annotations

import json
import multiprocessing

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from hdetr.cli import main
from hdetr.engine.loaders import Loader
from hdetr.errors import BadImageError, DataError, child_error
from support import bad_input_corpus as corpus


class Failing(Dataset):
    def __init__(self, exc):
        self.exc = exc

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 1:
            raise self.exc
        return torch.zeros(1)


class TwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def _raised(loader_type, exc):
    loader = loader_type(Failing(exc), num_workers=2)
    it = iter(loader)
    try:
        with pytest.raises(BaseException) as info:
            list(it)
    finally:
        # Shut the workers down now. Left to the garbage collector, the iterator may be collected after
        # its queues, and torch then waits 5 s for each worker before killing it (10 s a test).
        getattr(it, "_it", it)._shutdown_workers()
    return info.value


@pytest.mark.parametrize("exc, kind, text", [
    (DataError("ds/a.jpg: image 3: cannot decode\n  second line"), DataError, "ds/a.jpg: image 3: cannot decode\n  second line"),
    (BadImageError("ds/b.png: file not found", "ds/b.png", 3), BadImageError, "ds/b.png: file not found"),
    (OSError(28, "No space left on device", "/x/y"), OSError, "[Errno 28] No space left on device: '/x/y'"),
    (ValueError("plain: value"), ValueError, "plain: value"),
])
def test_worker_errors_come_back_as_raised(exc, kind, text):
    wrapped = _raised(DataLoader, exc)
    assert "Traceback" in str(wrapped)  # what torch hands over: the worker's traceback as the message
    for e in (child_error(wrapped), _raised(Loader, exc)):
        assert type(e) is kind
        assert str(e) == text
    assert "Traceback" in str(child_error(wrapped).__cause__)  # still there for --debug


def test_a_type_that_cannot_be_rebuilt_keeps_its_name_and_message():
    e = child_error(_raised(DataLoader, TwoArgs("a", "b")))
    assert type(e) is RuntimeError and str(e) == "TwoArgs: a/b"


def test_other_errors_pass_unchanged():
    e = ValueError("Caught nothing here")
    assert child_error(e) is e


@pytest.fixture(scope="module")
def shared(module_dir):
    torch.set_num_threads(1)
    return corpus.make_shared(module_dir("child_errors"))


def _corrupt_val(shared, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(shared["dataset"], ds)
    doc = json.loads((ds / "valid" / "_annotations.coco.json").read_text())
    img = ds / "valid" / doc["images"][0]["file_name"]
    img.write_bytes(img.read_bytes()[:150])
    return ds, img


@pytest.mark.slow
@pytest.mark.process
def test_eval_with_workers_gives_the_workers_error_in_one_line(shared, tmp_path, capsys):
    ds, img = _corrupt_val(shared, tmp_path)
    code = main(["eval", str(shared["model"]), str(ds), "--workers", "2", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("hdetr eval: error: ") and img.name in lines[0], err
    assert "Traceback" not in err and "worker process" not in err
    # The workers are gone when the error is reported, not later when the garbage collector takes the
    # iterator (torch then waits 5 s per worker: a stall in the user's Python session).
    assert not multiprocessing.active_children()


def test_close_stops_the_workers_of_an_iteration_left_by_an_error():
    loader = Loader(Failing(ValueError("plain: value")), num_workers=2)
    with pytest.raises(ValueError):
        list(loader)
    loader.close()
    assert not multiprocessing.active_children()


@pytest.mark.slow
@pytest.mark.process
def test_debug_still_shows_the_workers_traceback(shared, tmp_path, capsys):
    ds, img = _corrupt_val(shared, tmp_path)
    code = main(["--debug", "eval", str(shared["model"]), str(ds), "--workers", "2", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Original Traceback" in err and err.strip().splitlines()[-1].startswith("hdetr eval: error: ")
