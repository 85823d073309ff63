"""Fixtures every test package may use."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread, as every Flower ClientApp and every threads/processes worker trains:
    the same floating-point sums."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
