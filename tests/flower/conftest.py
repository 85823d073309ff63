"""The simulator tests' synthetic dataset, for the Flower tests too."""

from tests.sim.conftest import synthetic  # noqa: F401
