"""Where things are, found from this file's place: the repository, tests/ and the fixtures under it.

Tests and helpers take their paths from here, so moving a test between tests/unit, tests/integration and
tests/conformance changes none of them.
"""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
