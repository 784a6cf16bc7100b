"""Shared fixtures. Test kinds are pytest markers in the test files themselves: ``slow`` (over ~20 s on
a loaded 2-core machine) and ``process`` (starts child processes or servers); ``make test-fast``
leaves both out.

``tests/`` is on the import path through pytest's ``pythonpath`` setting (pyproject.toml): tests import
their helpers from the ``support`` package (tests/support), never from a sibling module.
"""

import shutil

import pytest

from support.file_order import order_files, read_durations, recorder_from_env
from support.worker_threads import worker_threads  # noqa: F401  (autouse: each worker's share of the cores)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """8 train / 4 val synthetic 64 px images (all the same size: no padding differences)."""
    from hdetr.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory):
    """``module_dir(name)``: a new folder for a test file's shared fixtures (a training run, an export),
    all of them removed when the file's tests are done, unless one of them failed (kept to look into).
    pytest would keep them to the end of the session: ~2 GB of runs and checkpoints by then."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed

    def make(name):
        folder = root / name
        folder.mkdir()
        return folder

    yield make
    if request.session.testsfailed == failed_before:
        shutil.rmtree(root, ignore_errors=True)


def pytest_configure(config):
    recorder = recorder_from_env(config)
    if recorder is not None:
        config.pluginmanager.register(recorder, "hdetr-test-durations")


def pytest_collection_modifyitems(session, config, items):
    """The longest test files first (tests/durations.json; support/file_order.py says why)."""
    order_files(items, read_durations())
