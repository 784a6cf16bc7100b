import sys
from pathlib import Path

# Helpers shared by tests (conformance runner) live beside them.
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """8 train / 4 val synthetic 64 px images (all the same size: no padding differences)."""
    from hdetr.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, num_train=8, num_val=4, image_size=64, seed=0)
    return root
