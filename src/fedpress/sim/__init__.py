"""fedpress.sim: the in-process drivers: synchronous rounds (`rounds`) and the virtual clock (`asynchronous`)."""

from fedpress.runtime.experiment import Experiment, setup
from fedpress.sim.rounds import Progress, run, run_round, sample_clients

__all__ = ["Experiment", "Progress", "run", "run_round", "sample_clients", "setup"]
