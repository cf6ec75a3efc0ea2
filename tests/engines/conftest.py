"""Single-threaded torch for the trainer tests (2 shared cores)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # the machine has 2 cores shared by parallel test runs; small ops are much faster single-threaded
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
