"""The simulator tests' synthetic dataset, for the runtime core's tests."""

from tests.sim.conftest import synthetic  # noqa: F401
