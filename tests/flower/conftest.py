"""Fixtures of the Flower tests: the simulator tests' synthetic dataset, one torch thread."""

import pytest
import torch

from tests.sim.conftest import synthetic  # noqa: F401


@pytest.fixture
def one_thread():
    """One torch thread, as every Flower ClientApp: the same floating-point sums."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
