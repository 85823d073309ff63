"""A small synthetic dataset standing in for MNIST, so simulator tests run in seconds and
need no files. Four gaussian classes in 16 dimensions, shaped like 1x4x4 images."""

import pytest
import torch

from fedpress.config import from_dict
from fedpress.data import Dataset


def synthetic_dataset(n_train=1200, n_test=400, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 16, generator=g) * 2.0

    def draw(n):
        y = torch.randint(0, 4, (n,), generator=g)
        x = centers[y] + torch.randn(n, 16, generator=g)
        return x.view(n, 1, 4, 4), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return Dataset(x_train, y_train, x_test, y_test, num_classes=4, name="synthetic", input_shape=(1, 4, 4))


@pytest.fixture
def synthetic(monkeypatch):
    ds = synthetic_dataset()
    monkeypatch.setattr("fedpress.runtime.experiment.load", lambda name, normalize=True: ds)
    return ds


def tiny_config(**overrides):
    raw = {
        "name": "tiny",
        "seed": 3,
        "rounds": 6,
        "clients_per_round": 4,
        "eval_every": 2,
        "checkpoint_every": 2,
        "data": {"dataset": "mnist", "num_clients": 12, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "widths": [32]},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.1, "momentum": 0.5},
        "algorithm": {"name": "fedavg"},
    }
    return with_overrides(raw, overrides)


def with_overrides(raw: dict, overrides: dict):
    """The config of `raw` with dotted keys set ("train.lr": 0.1; a missing table is created)."""
    for key, value in overrides.items():
        table, _, leaf = key.rpartition(".")
        (raw.setdefault(table, {}) if table else raw)[leaf] = value
    return from_dict(raw)
