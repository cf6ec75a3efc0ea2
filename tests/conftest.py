"""Fixtures shared by several test folders."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (2 shared cores: small ops are much faster single-threaded).

    Not autouse: the folders that want it (engines, bundle, speed) opt in from their own conftest.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
