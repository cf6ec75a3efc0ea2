"""Single-threaded torch for the speed-path tests (2 shared cores; small ops are faster on one thread)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this folder runs single-threaded (fixture in tests/conftest.py)."""
    yield
