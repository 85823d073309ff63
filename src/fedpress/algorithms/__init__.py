"""fedpress.algorithms: one module a method, each a bundle of pure server and client steps."""

from fedpress.algorithms.base import Algorithm, ClientContext, RoundContext, Uplink, weighted_mean
from fedpress.algorithms.fedavg import FedAvg, ServerState
from fedpress.algorithms.registry import REGISTRY, build, list_algorithms, resolve_params

__all__ = [
    "REGISTRY",
    "Algorithm",
    "ClientContext",
    "FedAvg",
    "RoundContext",
    "ServerState",
    "Uplink",
    "build",
    "list_algorithms",
    "resolve_params",
    "weighted_mean",
]
