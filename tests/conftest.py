"""Shared fixtures. Test kinds are pytest markers in the test files themselves: ``slow`` (over ~20 s on
a loaded 2-core machine) and ``process`` (starts child processes or servers); ``make test-fast``
leaves both out.

``tests/`` is on the import path through pytest's ``pythonpath`` setting (pyproject.toml): tests import
their helpers from the ``support`` package (tests/support), never from a sibling module.
"""

import pytest

from support.worker_threads import worker_threads  # noqa: F401  (autouse: each worker's share of the cores)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """8 train / 4 val synthetic 64 px images (all the same size: no padding differences)."""
    from hdetr.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)
    return root


def pytest_collection_modifyitems(session, config, items):
    """Tests marked slow first (a stable sort: their order among themselves, and the others', is kept).

    ``make test`` runs the files on parallel workers (pytest-xdist, ``--dist loadfile``), in this order:
    when the longest files start first, the short ones fill the gaps at the end and the workers finish
    together, instead of one worker running a long file alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
