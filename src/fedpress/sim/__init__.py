"""fedpress.sim: the runtimes that run an algorithm (synchronous rounds now)."""

from fedpress.sim.rounds import Experiment, Progress, run, run_round, sample_clients, setup

__all__ = ["Experiment", "Progress", "run", "run_round", "sample_clients", "setup"]
