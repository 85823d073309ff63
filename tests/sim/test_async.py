"""The asynchronous engine end to end on the synthetic dataset: virtual clock, staleness,
the wire and the ledger, checkpoint/resume, and QAFeL's hidden state."""

import csv
import heapq
import json

import pytest
import torch

from fedpress.metrics.ledger import BROADCAST, DOWN, JOIN, UP
from fedpress.runtime.executor import Sequential
from fedpress.runtime.transport import dense_frame_bytes
from fedpress.sim import asynchronous
from fedpress.sim.asynchronous import Engine, Flight, arrival_first, fresh, setup, staleness_weight, within_staleness
from tests.sim.conftest import synthetic_dataset, with_overrides


def async_config(**overrides):
    raw = {
        "name": "tiny_async",
        "seed": 3,
        "rounds": 6,
        "eval_every": 2,
        "checkpoint_every": 2,
        "data": {"dataset": "mnist", "num_clients": 12, "partition": "iid"},
        "model": {"name": "mlp", "widths": [16]},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.1},
        "algorithm": {"name": "fedbuff", "buffer_size": 3},
        "async": {"concurrency": 4},
    }
    return with_overrides(raw, overrides)


QAFEL = {
    "algorithm.name": "qafel",
    "algorithm.client_quantizer": "qsgd",
    "algorithm.client_levels": 4,
    "algorithm.server_quantizer": "qsgd",
    "algorithm.server_levels": 8,
}


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in csv.DictReader(f)]


def steps(cfg, n=None, executor=None):
    """Run n server steps with the Engine directly; returns (experiment, progress, rows)."""
    exp = setup(cfg)
    p = fresh(exp)
    engine = Engine(exp, p, executor or Sequential())
    return exp, p, [engine.step() for _ in range(n or cfg.rounds)]


# ---------------------------------------------------------------------------- clock and staleness


def test_staleness_weights_follow_their_formulas():
    assert staleness_weight(7, "constant") == 1.0
    assert staleness_weight(3, "polynomial", a=0.5) == pytest.approx(0.5)  # FedBuff's 1/sqrt(1 + tau)
    assert staleness_weight(0, "polynomial", a=2.0) == 1.0
    assert staleness_weight(4, "hinge", a=0.5, b=4) == 1.0
    assert staleness_weight(6, "hinge", a=0.5, b=4) == pytest.approx(0.5)  # 1 / (1 + 0.5 * 2)
    with pytest.raises(ValueError, match=">= 0"):
        staleness_weight(-1, "constant")
    assert within_staleness(10**6, -1) and within_staleness(2, 2) and not within_staleness(3, 2)


def test_clock_orders_ties_by_start_and_arrivals_before_starts():
    flights = []
    for seq in (4, 1, 3, 0, 2):
        heapq.heappush(flights, Flight(1.0 if seq != 3 else 0.5, seq, seq, 0, 0.0, None))
    assert [heapq.heappop(flights).seq for _ in range(5)] == [3, 0, 1, 2, 4]
    same = [Flight(2.0, 0, 0, 0, 0.0, None)]
    assert arrival_first(same, 2.0) and not arrival_first(same, 1.999) and not arrival_first([], 5.0)


def test_staleness_matches_a_hand_built_sequence_at_fixed_concurrency(synthetic):
    """Two clients, constant durations 1, K = 1; an arrival restarts its client before the step:
    t=1: start 0 (v0) arrives, tau 0 -> v1; start 1 (v0) arrives, tau 1 -> v2 (its restart saw v1);
    t=2: start 2 (v0) tau 2, start 3 (v1) tau 2, ...; two steps per unit of time."""
    cfg = async_config(
        **{"data.num_clients": 2, "algorithm.buffer_size": 1, "async.concurrency": 2, "async.duration": "constant"}
    )
    _, _, table = steps(cfg)
    assert [r["staleness_max"] for r in table] == [0, 1, 2, 2, 2, 2]
    assert [r["virtual_time"] for r in table] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert [r["uploads"] for r in table] == [1, 2, 3, 4, 5, 6]


def test_staleness_under_a_constant_rate_with_ties(synthetic):
    """Starts every 0.5, durations 1, K = 1. The start at t = 1 ties with the first arrival;
    the arrival comes first, so that start already sees version 1 and every later update is
    exactly one step stale (start-first would make it 2)."""
    cfg = async_config(
        **{"algorithm.buffer_size": 1, "async.arrivals": "rate", "async.rate": 2.0, "async.duration": "constant"}
    )
    _, _, table = steps(cfg)
    assert [r["staleness_max"] for r in table] == [0, 1, 1, 1, 1, 1]
    assert [r["virtual_time"] for r in table] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert all(r["in_flight"] == 1 for r in table)  # at each step the tying start has not happened yet


def test_max_staleness_drops_old_updates_after_they_crossed_the_wire(synthetic):
    cfg = async_config(
        **{
            "async.concurrency": 8,
            "algorithm.buffer_size": 2,
            "async.duration": "exponential",
            "async.max_staleness": 1,
            "rounds": 8,
        }
    )
    exp, p, table = steps(cfg)
    frame = dense_frame_bytes(exp.model.layout)
    assert all(r["staleness_max"] <= 1 for r in table)
    assert sum(r["dropped_stale"] for r in table) > 0
    for r in table:  # dropped updates were sent and counted, then not used
        assert r["uplink_bytes"] == (r["clients"] + r["dropped_stale"]) * frame
        assert r["clients"] == 2


def test_heterogeneous_speeds_change_who_arrives_first(synthetic):
    base = async_config(**{"async.duration": "constant"})
    fast_slow = async_config(**{"async.duration": "constant", "async.speed_sigma": 1.0})
    assert len({r["virtual_time"] for r in steps(base)[2]}) < len({r["virtual_time"] for r in steps(fast_slow)[2]})


# ---------------------------------------------------------------------------- runs and outputs


def test_run_writes_the_outputs_with_virtual_time_and_learns(synthetic, tmp_path):
    summary = asynchronous.run(async_config(rounds=12, eval_every=4), tmp_path, progress=False)
    for name in ("config.toml", "metrics.csv", "summary.json", "ledger.csv", "accuracy_vs_round.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not (tmp_path / "checkpoint.pt").exists()
    table = rows(tmp_path / "metrics.csv")
    assert [int(r["round"]) for r in table] == list(range(1, 13))
    times = [float(r["virtual_time"]) for r in table]
    assert times == sorted(times) and times[0] > 0
    assert [int(r["uploads"]) for r in table] == sorted(int(r["uploads"]) for r in table)
    assert all(int(r["clients"]) == 3 for r in table)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["server_steps"] == 12 and summary["uploads"] == int(table[-1]["uploads"])
    assert summary["final_accuracy"] > 0.8


def test_resume_after_a_kill_ends_with_identical_numbers(synthetic, tmp_path):
    cfg = async_config(rounds=8, **QAFEL, **{"async.arrivals": "rate", "async.rate": 3.0})
    full = asynchronous.run(cfg, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    def kill_at_5(row):
        if row["round"] == 5:
            raise Killed  # the last checkpoint is from step 4, with clients in flight

    with pytest.raises(Killed):
        asynchronous.run(cfg, tmp_path / "resumed", progress=False, on_round_end=kill_at_5)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    resumed = asynchronous.run(cfg, tmp_path / "resumed", progress=False, resume=True)
    assert rows(tmp_path / "full" / "metrics.csv") == rows(tmp_path / "resumed" / "metrics.csv")
    assert (tmp_path / "full" / "ledger.csv").read_text() == (tmp_path / "resumed" / "ledger.csv").read_text()
    drop = {"wall_seconds"}
    assert {k: v for k, v in full.items() if k not in drop} == {k: v for k, v in resumed.items() if k not in drop}


def test_same_seed_same_numbers_other_seed_other_numbers(synthetic, tmp_path):
    cfg = async_config(rounds=4, **QAFEL, **{"async.duration": "exponential"})
    asynchronous.run(cfg, tmp_path / "a", progress=False)
    asynchronous.run(cfg, tmp_path / "b", progress=False)
    asynchronous.run(
        async_config(rounds=4, seed=9, **QAFEL, **{"async.duration": "exponential"}), tmp_path / "c", progress=False
    )
    assert rows(tmp_path / "a" / "metrics.csv") == rows(tmp_path / "b" / "metrics.csv")
    assert rows(tmp_path / "a" / "metrics.csv") != rows(tmp_path / "c" / "metrics.csv")


def test_non_finite_updates_are_rejected_and_the_client_restarts(synthetic):
    cfg = async_config(rounds=3)

    class Poison(Sequential):
        calls = 0

        def run(self, model, jobs, spec):
            results = super().run(model, jobs, spec)
            Poison.calls += 1
            if Poison.calls % 3 == 2:
                return [type(r)(torch.full_like(r.x, float("nan")), r.steps, r.loss) for r in results]
            return results

    exp, p, table = steps(cfg, executor=Poison())
    assert sum(r["rejected"] for r in table) > 0
    assert all(r["clients"] == 3 for r in table)  # a step still waits for K usable updates
    assert len(p.flights) == 4  # rejected clients restarted: the concurrency holds
    assert bool(torch.isfinite(p.server.x).all())
    frame = dense_frame_bytes(exp.model.layout)
    assert all(r["uplink_bytes"] == r["clients"] * frame for r in table)  # nothing was sent for them


def test_fedbuff_ledger_one_dense_download_per_start_and_upload_per_arrival(synthetic, tmp_path):
    cfg = async_config(rounds=3)
    asynchronous.run(cfg, tmp_path, progress=False)
    frame = dense_frame_bytes(setup(cfg).model.layout)
    with open(tmp_path / "ledger.csv") as f:
        ledger = list(csv.DictReader(f))
    assert {e["direction"] for e in ledger} == {UP, DOWN}
    assert all(int(e["bytes"]) == frame and int(e["receivers"]) == 1 for e in ledger)
    ups = [e for e in ledger if e["direction"] == UP]
    downs = [e for e in ledger if e["direction"] == DOWN]
    assert len(ups) == 9 and len(downs) == 9 + 4  # 4 starts at time 0, one restart per arrival


def test_qafel_ledger_counts_what_each_starting_client_receives(synthetic, tmp_path):
    cfg = async_config(rounds=4, **QAFEL)
    asynchronous.run(cfg, tmp_path, progress=False)
    frame = dense_frame_bytes(setup(cfg).model.layout)
    with open(tmp_path / "ledger.csv") as f:
        ledger = list(csv.DictReader(f))
    joins = [e for e in ledger if e["direction"] == JOIN]
    # a client's first download is x̂ whole, once; nothing is sent to a client that does not start
    assert len(joins) == len({e["client"] for e in joins}) and all(int(e["bytes"]) == frame for e in joins)
    downs = [e for e in ledger if e["direction"] == DOWN]
    assert downs and all(int(e["client"]) != BROADCAST and int(e["receivers"]) == 1 for e in downs)
    assert all(0 < int(e["bytes"]) <= frame for e in downs)  # a catch-up never costs more than x̂ whole
    assert any(int(e["bytes"]) < frame / 3 for e in downs)  # the q's: Q_s(x - x_hat) with 8 levels
    table = rows(tmp_path / "metrics.csv")
    for r in table:
        mine = [e for e in ledger if e["direction"] != UP and int(e["round"]) == int(r["round"])]
        assert int(r["downlink_bytes"]) == int(r["downlink_broadcast_bytes"]) == sum(int(e["bytes"]) for e in mine)
        assert int(r["initial_downlink_bytes"]) == sum(int(e["bytes"]) for e in mine if e["direction"] == JOIN)
    assert int(table[-1]["cum_initial_downlink_bytes"]) == frame * len(joins)


# ---------------------------------------------------------------------------- QAFeL's hidden state


def record_catchups(monkeypatch) -> list:
    """Every catch-up the runtime counts, as (client, Catchup), in order."""
    from fedpress.runtime import downlink

    got, real = [], downlink.post

    def spy(catchups, transport, round_):
        got.extend(catchups.items())
        return real(catchups, transport, round_)

    monkeypatch.setattr(downlink, "post", spy)
    return got


@pytest.mark.parametrize("init", ["whole", "seeded"])
def test_each_client_rebuilds_the_servers_hidden_state_from_its_bytes_alone(synthetic, monkeypatch, init):
    """Replays, independently of the engine, the catch-ups each client received (decoded from
    their bytes alone) and checks each against the server's x̂ of that version; and every
    start trains from the server's x̂ of the moment, as eager delivery of every q gave."""
    from fedpress.runtime import downlink

    cfg = async_config(rounds=6, **{**QAFEL, "algorithm.server_quantizer": "minmax_affine", "algorithm.server_bits": 2,
                                    "downlink.init": init})
    got = record_catchups(monkeypatch)
    exp = setup(cfg)
    p = fresh(exp)
    engine = Engine(exp, p, Sequential())
    x_hat = {0: p.server.x_hat.clone()}  # the server's x̂ of each version
    trained_from, real_catch_up = [], engine.catch_up

    def catch_up(client):
        x = real_catch_up(client)
        trained_from.append(torch.equal(x, p.server.x_hat))
        return x

    engine.catch_up = catch_up
    for _ in range(cfg.rounds):
        engine.step()
        x_hat[p.round] = p.server.x_hat.clone()
        assert torch.equal(p.hidden.x_hat, p.server.x_hat)
        assert not torch.equal(p.server.x_hat, p.server.x)  # 2-bit Q_s: x_hat lags x
    assert trained_from and all(trained_from)
    copies = {}
    for client, c in got:
        start = exp.x0 if init == "seeded" else None
        copies[client] = downlink.apply(copies.get(client, start), c, exp.wire, exp.algorithm.apply_broadcast)
        assert torch.equal(copies[client], x_hat[c.version]), (client, c.version, c.form)
    assert {c.form for _, c in got} >= {"q"}
    assert len({client for client, _ in got}) > 4  # several clients, several starts each


def test_lazy_seeded_qafel_downloads_less_per_receiving_client_than_fedbuff(synthetic, tmp_path):
    """The issue's check on the virtual clock: with lazy catch-up and seeded init, QAFeL's
    downlink per receiving client comes out below FedBuff's (which downloads x per start)."""
    fedbuff = asynchronous.run(async_config(rounds=5), tmp_path / "fedbuff", progress=False)
    qafel = asynchronous.run(async_config(rounds=5, **QAFEL, **{"downlink.init": "seeded"}), tmp_path / "qafel",
                             progress=False)
    assert qafel["downlink_bytes"] < fedbuff["downlink_bytes"]
    whole = asynchronous.run(async_config(rounds=5, **QAFEL), tmp_path / "whole", progress=False)
    # a seeded client's first download is its catch-up from x0 (nothing at version 0), not x̂ whole
    assert qafel["initial_downlink_bytes"] < whole["initial_downlink_bytes"] / 3
    assert whole["downlink_bytes"] > qafel["downlink_bytes"]


def test_qafel_with_identity_quantizers_equals_fedbuff_bit_for_bit(synthetic):
    identity = {"algorithm.name": "qafel", "algorithm.client_quantizer": "fp32", "algorithm.server_quantizer": "fp32"}
    for arrivals in ({"async.duration": "exponential"}, {"async.arrivals": "rate", "async.rate": 5.0}):
        _, fb, fb_rows = steps(async_config(rounds=8, **arrivals))
        _, qa, qa_rows = steps(async_config(rounds=8, **identity, **arrivals))
        assert torch.equal(fb.server.x, qa.server.x)
        assert torch.equal(qa.server.x_hat, qa.server.x)
        assert [r["test_accuracy"] for r in fb_rows] == [r["test_accuracy"] for r in qa_rows]
        assert [r["staleness_mean"] for r in fb_rows] == [r["staleness_mean"] for r in qa_rows]
        assert fb_rows[-1]["cum_uplink_bytes"] == qa_rows[-1]["cum_uplink_bytes"]


def test_qafel_stays_close_to_fedbuff_where_naive_drifts(synthetic):
    """Same seed and clock: a 2-bit server quantizer hurts Naive (clients start from Q_s(x))
    more than QAFeL (clients start from x_hat, which accumulates every q)."""
    common = {
        "rounds": 10,
        "algorithm.client_quantizer": "fp32",
        "algorithm.server_quantizer": "minmax_affine",
        "algorithm.server_bits": 2,
    }
    _, fb, _ = steps(async_config(rounds=10))
    _, qa, _ = steps(async_config(**common, **{"algorithm.name": "qafel"}))
    _, nv, _ = steps(async_config(**common, **{"algorithm.name": "naive"}))
    assert (qa.server.x - fb.server.x).norm() < (nv.server.x - fb.server.x).norm()


# ---------------------------------------------------------------------------- binary logistic regression


def binary_dataset():
    ds = synthetic_dataset()
    from fedpress.data import Dataset

    y = (ds.y_train >= 2).long()
    return Dataset(
        ds.x_train.flatten(1),
        y,
        ds.x_test[:0].flatten(1),
        ds.y_test[:0],
        num_classes=2,
        name="binary",
        input_shape=(16,),
    )


def test_one_logit_logistic_regression_reports_the_regularised_objective(monkeypatch, tmp_path):
    ds = binary_dataset()
    monkeypatch.setattr("fedpress.runtime.experiment.load", lambda name, normalize=True: ds)
    cfg = async_config(
        **{
            "model": {"name": "logreg", "outputs": 1, "init": "zeros"},
            "train.steps": 3,
            "train.batch_size": 10_000,
            "train.lr": 0.5,
            "train.weight_decay": 0.01,
            "async.eval_train": True,
            "eval_every": 3,
        }
    )
    exp = setup(cfg)
    assert exp.model.num_params == 17 and not exp.x0.any()
    asynchronous.run(cfg, tmp_path, progress=False)
    table = rows(tmp_path / "metrics.csv")
    objective = [float(r["train_objective"]) for r in table if r["train_objective"]]
    assert objective[-1] < objective[0] < 0.6931472  # below log 2, the loss at x = 0
    assert float(table[-1]["train_accuracy"]) > 0.8
    assert table[-1]["test_accuracy"] == "nan"  # no test split


def test_cli_runs_asynchronous_configs(synthetic, tmp_path, capsys):
    from fedpress.cli import main

    path = tmp_path / "a.toml"
    path.write_text(
        'rounds = 2\neval_every = 1\n[data]\ndataset = "mnist"\nnum_clients = 6\npartition = "iid"\n'
        '[model]\nname = "mlp"\nwidths = [8]\n[algorithm]\nname = "qafel"\n[async]\nconcurrency = 3\n'
    )
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 server steps" in out and "virtual time" in out
    assert (tmp_path / "run" / "config.toml").read_text().count("[async]") == 1
