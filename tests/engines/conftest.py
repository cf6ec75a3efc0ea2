"""Single-threaded torch for the trainer tests (2 shared cores)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this folder runs single-threaded (fixture in tests/conftest.py)."""
    yield
