"""fedpress: communication-efficient federated learning with exact byte accounting.

    import fedpress
    cfg = fedpress.load_config("configs/quickstart.toml", ["algorithm.name=topk_ef"])
    summary = fedpress.run(cfg, "runs/demo")

Bring your own model, dataset, partitioner, codec or algorithm with `register_*`
(docs/extending.md); write an algorithm against `RoundsAlgorithm` or `BufferedAlgorithm`.
"""

from pathlib import Path

from fedpress.algorithms.base import (
    MODEL,
    BufferedAlgorithm,
    ClientContext,
    RoundContext,
    RoundsAlgorithm,
    Uplink,
    weighted_mean,
)
from fedpress.algorithms.params import Param
from fedpress.config import Config
from fedpress.config import from_dict as config_from
from fedpress.config import load as load_config
from fedpress.data import Dataset
from fedpress.extend import (
    dataset_from,
    register_algorithm,
    register_codec,
    register_dataset,
    register_model,
    register_partitioner,
)
from fedpress.layout import Layout
from fedpress.local import LocalPlan, LocalResult
from fedpress.wire.message import Message

__version__ = "0.1.0"


def run(cfg: Config, out: str | Path | None = None, **options) -> dict:
    """Run a config in this process to the end and write its run directory: synchronous
    rounds, or the virtual-clock engine for an asynchronous algorithm (FedBuff, QAFeL,
    Naive). `options`: `resume`, `overwrite`, `progress`, `on_round_end` (called with each
    metrics row). Returns the summary."""
    from fedpress.sim import asynchronous, rounds

    return (asynchronous.run if cfg.is_async else rounds.run)(cfg, out, **options)


__all__ = [
    "MODEL",
    "BufferedAlgorithm",
    "ClientContext",
    "Config",
    "Dataset",
    "Layout",
    "LocalPlan",
    "LocalResult",
    "Message",
    "Param",
    "RoundContext",
    "RoundsAlgorithm",
    "Uplink",
    "__version__",
    "config_from",
    "dataset_from",
    "load_config",
    "register_algorithm",
    "register_codec",
    "register_dataset",
    "register_model",
    "register_partitioner",
    "run",
    "weighted_mean",
]
