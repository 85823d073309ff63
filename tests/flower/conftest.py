"""Fixtures of the Flower tests: the simulator tests' synthetic dataset (`one_thread` is tests/conftest.py's)."""

from tests.sim.conftest import synthetic  # noqa: F401
