"""FedSparQ, FLARE and their baselines through the simulator."""

import csv
import os
from pathlib import Path

import pytest
import torch

from fedpress.config import from_dict
from fedpress.runtime.executor import Sequential
from fedpress.sim import run, sample_clients, setup
from tests.sim.conftest import tiny_config
from tests.sim.test_run import fresh_progress, rows


def test_flare_with_tau0_zero_equals_ec_bit_for_bit(synthetic, tmp_path):
    flare = tiny_config(**{"algorithm.name": "flare", "algorithm.tau0": 0.0, "algorithm.keep_percent": 5.0})
    ec = tiny_config(**{"algorithm.name": "ec", "algorithm.keep_percent": 5.0})
    run(flare, tmp_path / "flare", progress=False)
    run(ec, tmp_path / "ec", progress=False)
    assert rows(tmp_path / "flare" / "metrics.csv") == rows(tmp_path / "ec" / "metrics.csv")
    from fedpress.sim.rounds import run_round

    models = []
    for cfg in (flare, ec):
        exp = setup(cfg)
        p = fresh_progress(exp)
        for t in range(3):
            run_round(exp, p, Sequential(), t)
        models.append(exp.algorithm.model(p.server))
    assert torch.equal(*models)


def test_fedsparq_defaults_equal_the_codec_composition_bit_for_bit(synthetic):
    """FedSparQ's written-out client step (spec §2.2) = FedAvg with
    error_feedback(chain(ema_threshold, fp16)), FedProx 0.01 and server momentum 0.9."""
    from fedpress.algorithms import FedAvg
    from fedpress.compress import chain, ema_threshold, error_feedback, fp16
    from fedpress.sim.rounds import run_round

    cfg = tiny_config(**{"algorithm.name": "fedsparq", "rounds": 3})
    models = []
    for composed in (False, True):
        exp = setup(cfg)
        if composed:
            alg = FedAvg(uplink=error_feedback(chain(ema_threshold(0.9, "mean_abs", 1.0), fp16())), prox_mu=0.01,
                         server_momentum=0.9)
            exp = type(exp)(exp.config, exp.dataset, exp.parts, exp.model, alg, exp.x0)
        p = fresh_progress(exp)
        for t in range(3):
            run_round(exp, p, Sequential(), t)
        models.append(exp.algorithm.model(p.server))
    assert torch.equal(*models)


def test_flare_differs_from_ec_once_the_accumulator_is_nonzero(synthetic, tmp_path):
    common = {"algorithm.keep_percent": 5.0, "rounds": 3}
    run(tiny_config(**{"algorithm.name": "flare", "algorithm.tau0": 5.0, "algorithm.c": 1.0, **common}),
        tmp_path / "flare", progress=False)
    run(tiny_config(**{"algorithm.name": "ec", **common}), tmp_path / "ec", progress=False)
    a, b = rows(tmp_path / "flare" / "metrics.csv"), rows(tmp_path / "ec" / "metrics.csv")
    assert a[0] == b[0]  # round 1: e = 0, nothing to regularise
    assert a[-1]["train_loss"] != b[-1]["train_loss"]


def test_unavailable_clients_keep_their_accumulators(synthetic):
    from fedpress.sim.rounds import run_round

    cfg = tiny_config(**{"algorithm.name": "flare", "algorithm.keep_percent": 5.0, "clients_per_round": 3,
                         "data.num_clients": 6, "rounds": 4})
    exp = setup(cfg)
    p = fresh_progress(exp)
    for t in range(4):
        before = {c: s.residual.clone() for c, s in p.clients.items()}
        run_round(exp, p, Sequential(), t)
        working = set(sample_clients(cfg, t))
        for c, residual in before.items():
            if c not in working:
                assert torch.equal(p.clients[c].residual, residual)


def test_density_is_logged_per_round_and_per_tensor(synthetic, tmp_path):
    cfg = tiny_config(**{"algorithm.name": "fedsparq", "rounds": 3})
    run(cfg, tmp_path, progress=False)
    with open(tmp_path / "density.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and list(table[0]) == ["round", *setup(cfg).model.layout.names]
    assert all(0 <= float(v) <= 1 for r in table for k, v in r.items() if k != "round")
    metrics = rows(tmp_path / "metrics.csv")
    assert all(0 < float(r["density"]) < 1 for r in metrics)
    assert all(int(r["uplink_values"]) > 0 for r in metrics)


MIRROR = Path(os.environ.get("FEDPRESS_MIRROR", Path(__file__).resolve().parents[3] / "shared" / "datasets"))


@pytest.mark.skipif(not (MIRROR / "mnist").is_dir(), reason="MNIST files not available")
@pytest.mark.parametrize("algorithm", [
    {"name": "fedsparq"},
    {"name": "flare", "keep_percent": 1.0},
    {"name": "ec", "keep_percent": 1.0},
    {"name": "ec_prox", "keep_percent": 1.0},
    {"name": "ef21", "keep_percent": 1.0},
])
def test_each_method_learns_real_mnist(algorithm, tmp_path, monkeypatch):
    """A seeded learning check: 10 clients of 600 MNIST images, 6 rounds, an MLP."""
    monkeypatch.setenv("FEDPRESS_MIRROR", str(MIRROR))
    cfg = from_dict({
        "name": algorithm["name"], "seed": 0, "rounds": 6, "clients_per_round": 10, "eval_every": 6,
        "checkpoint_every": 0,
        "data": {"dataset": "mnist", "num_clients": 10, "partition": "contiguous", "size": 600},
        "model": {"name": "mlp", "widths": [64]},
        "train": {"epochs": 1, "batch_size": 50, "lr": 0.05, "momentum": 0.9},
        "algorithm": algorithm,
    })
    summary = run(cfg, tmp_path, progress=False)
    assert summary["final_accuracy"] > 0.6, summary  # chance is 0.1
    assert summary["uplink_compression"] > 2
