"""Single-threaded torch for the speed-path tests (2 shared cores; small ops are faster on one thread)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
