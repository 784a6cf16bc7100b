"""Shared fixtures, and the markers of support/kinds.py put on the tests it names.

``tests/`` is on the import path through pytest's ``pythonpath`` setting (pyproject.toml): tests import
their helpers from the ``support`` package (tests/support), never from a sibling module.
"""

from pathlib import Path

import pytest

from support.kinds import kinds_of


def pytest_collection_modifyitems(items):
    for item in items:
        name = getattr(item, "originalname", None) or item.name.split("[")[0]
        for kind in kinds_of(Path(str(item.fspath)).stem, name):
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """8 train / 4 val synthetic 64 px images (all the same size: no padding differences)."""
    from hdetr.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)
    return root
