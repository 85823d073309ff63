"""The synchronous simulator end to end on a synthetic dataset."""

import csv
import json
from dataclasses import replace

import pytest
import torch

from fedpress.algorithms import ClientContext, RoundContext
from fedpress.local import LocalPlan, TrainSpec, train
from fedpress.metrics.ledger import Ledger
from fedpress.rng import derive
from fedpress.runtime.executor import Sequential
from fedpress.runtime.transport import dense_frame_bytes
from fedpress.sim import Progress, run, run_round, sample_clients, setup
from fedpress.wire import Reason, WireError
from tests.sim.conftest import tiny_config


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in csv.DictReader(f)]


def fresh_progress(exp):
    return Progress(0, exp.algorithm.init_server(exp.x0, exp.model.layout), {},
                    Ledger(dense_frame_bytes(exp.model.layout)), [])


def test_run_writes_the_documented_outputs_and_learns(synthetic, tmp_path):
    summary = run(tiny_config(), tmp_path, progress=False)
    for name in ("config.toml", "metrics.csv", "summary.json", "ledger.csv", "accuracy_vs_round.png",
                 "accuracy_vs_mb.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not (tmp_path / "checkpoint.pt").exists()
    table = rows(tmp_path / "metrics.csv")
    assert [int(r["round"]) for r in table] == list(range(1, 7))
    assert [r["test_accuracy"] != "" for r in table] == [False, True] * 3
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_accuracy"] > 0.8  # 4 well separated gaussians
    for key in ("final_accuracy", "best_accuracy", "rounds", "uplink_bytes", "downlink_bytes",
                "dense_uplink_bytes", "dense_downlink_bytes", "wall_seconds"):
        assert key in summary


def test_fedavg_identity_codec_equals_a_plain_fedavg_loop_bit_for_bit(synthetic):
    """Through the wire and the ledger, FedAvg with fp32 is exactly x + sum_i n_i/n (x_i - x)."""
    cfg = tiny_config(rounds=3)
    exp = setup(cfg)
    p, executor = fresh_progress(exp), Sequential()
    x = exp.x0.clone()
    spec = TrainSpec(lr=0.1, batch_size=16, epochs=1, momentum=0.5)
    for t in range(3):
        run_round(exp, p, executor, t)
        clients = sample_clients(cfg, t)
        n = {c: float(exp.parts[c].numel()) for c in clients}
        total = sum(n.values())
        new = torch.zeros_like(x)
        for c in clients:
            idx = exp.parts[c]
            local = train(exp.model, LocalPlan(x), synthetic.x_train[idx], synthetic.y_train[idx], spec,
                          derive(cfg.seed, "train", t, c)).x
            new.add_(local - x, alpha=n[c] / total)
        x = x + 1.0 * new
        assert torch.equal(exp.algorithm.model(p.server), x), f"round {t}"


def test_resume_after_a_kill_ends_with_identical_numbers(synthetic, tmp_path):
    cfg = tiny_config(**{"algorithm.name": "topk_ef", "algorithm.ratio": 0.05, "algorithm.precision": "fp16"})
    full = run(cfg, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    def kill_at_5(row):
        if row["round"] == 5:
            raise Killed  # after round 5; the last checkpoint is from round 4

    with pytest.raises(Killed):
        run(cfg, tmp_path / "resumed", progress=False, on_round_end=kill_at_5)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    resumed = run(cfg, tmp_path / "resumed", progress=False, resume=True)
    assert rows(tmp_path / "full" / "metrics.csv") == rows(tmp_path / "resumed" / "metrics.csv")
    for name in ("ledger.csv", "density.csv"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "resumed" / name).read_text()
    drop = {"wall_seconds"}
    assert {k: v for k, v in full.items() if k not in drop} == {k: v for k, v in resumed.items() if k not in drop}


def test_resume_refuses_a_different_config(synthetic, tmp_path):
    def stop(row):
        if row["round"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(), tmp_path, progress=False, on_round_end=stop)
    from fedpress.errors import ConfigError

    with pytest.raises(ConfigError, match="different config"):
        run(tiny_config(seed=4), tmp_path, progress=False, resume=True)


def test_same_seed_same_numbers_other_seed_other_numbers(synthetic, tmp_path):
    cfg = tiny_config(**{"algorithm.name": "qsgd", "algorithm.levels": 3, "rounds": 4})
    run(cfg, tmp_path / "a", progress=False)
    run(cfg, tmp_path / "b", progress=False)
    run(tiny_config(**{"algorithm.name": "qsgd", "algorithm.levels": 3, "rounds": 4, "seed": 9}), tmp_path / "c",
        progress=False)
    assert rows(tmp_path / "a" / "metrics.csv") == rows(tmp_path / "b" / "metrics.csv")
    assert rows(tmp_path / "a" / "metrics.csv") != rows(tmp_path / "c" / "metrics.csv")


def test_ledger_counts_real_bytes_both_views(synthetic, tmp_path):
    cfg = tiny_config(rounds=2)
    run(cfg, tmp_path / "dense", progress=False)
    exp = setup(cfg)
    frame = dense_frame_bytes(exp.model.layout)
    for r in rows(tmp_path / "dense" / "metrics.csv"):
        assert int(r["uplink_bytes"]) == 4 * frame  # 4 clients, one fp32 frame each
        assert int(r["downlink_broadcast_bytes"]) == frame  # one broadcast, counted once
        assert int(r["downlink_bytes"]) == 4 * frame  # and per receiving client
        assert int(r["dense_uplink_bytes"]) == 4 * frame
    sparse = tiny_config(**{"algorithm.name": "topk_ef", "algorithm.ratio": 0.01, "algorithm.precision": "fp16",
                            "rounds": 2})
    summary = run(sparse, tmp_path / "sparse", progress=False)
    assert summary["uplink_compression"] > 40
    with open(tmp_path / "sparse" / "ledger.csv") as f:
        ledger = list(csv.DictReader(f))
    assert sum(int(e["bytes"]) for e in ledger if e["direction"] == "up") == summary["uplink_bytes"]


def test_non_finite_updates_are_rejected_and_counted(synthetic):
    cfg = tiny_config(rounds=1, **{"algorithm.name": "topk_ef", "algorithm.ratio": 0.1})
    exp = setup(cfg)
    p = fresh_progress(exp)
    poisoned = sample_clients(cfg, 0)[1]

    class Poison(Sequential):
        def run(self, model, jobs, spec):
            results = super().run(model, jobs, spec)
            clients = sample_clients(cfg, 0)
            return [r if c != poisoned else type(r)(torch.full_like(r.x, float("nan")), r.steps, r.loss)
                    for c, r in zip(clients, results, strict=True)]

    row = run_round(exp, p, Poison(), 0)
    assert row["rejected"] == 1 and row["clients"] == 3
    assert row["rejected_reasons"] == "NON_FINITE_RESULT:1"
    assert poisoned not in p.clients  # its error-feedback state was not kept either
    assert bool(torch.isfinite(p.server.x).all())
    assert row["uplink_bytes"] < row["dense_uplink_bytes"] and row["dense_uplink_bytes"] == 3 * p.ledger.dense_bytes


def test_fp16_overflow_is_refused_at_the_sender(synthetic):
    cfg = tiny_config(rounds=1, **{"algorithm.precision": "fp16"})
    exp = setup(cfg)
    p = fresh_progress(exp)

    class Huge(Sequential):
        def run(self, model, jobs, spec):
            return [type(r)(r.x + 1e6, r.steps, r.loss) for r in super().run(model, jobs, spec)]

    row = run_round(exp, p, Huge(), 0)
    assert row["rejected"] == 4 and row["clients"] == 0
    assert row["rejected_reasons"] == "NON_FINITE:4"  # the encoder's WireError reason, named
    assert torch.equal(p.server.x, exp.x0)  # nothing averaged in


def test_error_feedback_state_lives_only_for_clients_that_were_sampled(synthetic):
    cfg = tiny_config(rounds=3, **{"algorithm.name": "topk_ef", "algorithm.ratio": 0.1})
    exp = setup(cfg)
    p = fresh_progress(exp)
    seen = set()
    for t in range(3):
        run_round(exp, p, Sequential(), t)
        seen |= set(sample_clients(cfg, t))
    assert set(p.clients) == seen and len(seen) < cfg.data.num_clients
    assert all(s.residual.abs().sum() > 0 for s in p.clients.values())


def test_contexts_derive_shared_and_private_streams():
    from fedpress.local import FlatModel
    from fedpress.models import build_model

    fm = FlatModel.of(build_model("mlp", (4,), 2, widths=[3]))
    r = RoundContext(2, 7, (0, 1), fm)
    a, b = ClientContext(2, 0, 10, 7, fm), ClientContext(2, 1, 10, 7, fm)
    assert torch.equal(torch.rand(3, generator=r.rng("coin")), torch.rand(3, generator=a.shared_rng("coin")))
    assert not torch.equal(torch.rand(3, generator=a.rng("x")), torch.rand(3, generator=b.rng("x")))


def test_wire_errors_other_than_non_finite_are_not_swallowed(synthetic, monkeypatch):
    """A client whose message cannot be encoded for a reason other than NaN/overflow is a bug: it raises."""
    cfg = tiny_config(rounds=1)
    exp = setup(cfg)

    def broken(*args, **kwargs):
        raise WireError(Reason.LAYOUT_MISMATCH, "test")

    monkeypatch.setattr("fedpress.sim.clients.wire.encode", broken)
    with pytest.raises(WireError):
        run_round(exp, fresh_progress(exp), Sequential(), 0)


def test_a_corrupt_reply_is_counted_and_rejected_never_aggregated(synthetic):
    """What a remote runtime can receive: bytes that are not a fedpress message."""
    from fedpress.sim.clients import InProcessClients
    from fedpress.sim.rounds import server_round

    class Corrupting(InProcessClients):
        def train(self, round_, downlinks):
            replies = super().train(round_, downlinks)
            first = min(replies)
            replies[first] = replace(replies[first], data=replies[first].data[:-3])  # truncated
            return replies

    cfg = tiny_config(rounds=1)
    exp = setup(cfg)
    p = fresh_progress(exp)
    row = server_round(exp, p, Corrupting(exp, p.clients, Sequential()), 0)
    assert row["rejected"] == 1 and row["clients"] == cfg.clients_per_round - 1
    assert row["rejected_reasons"] == "TRUNCATED:1"
    ups = [e for e in p.ledger.entries if e.direction == "up"]
    assert len(ups) == cfg.clients_per_round  # the corrupt bytes arrived: they are counted


def test_rejections_are_tallied_per_round_and_summed_in_the_summary():
    from fedpress.runtime.rejections import rejections, tally

    rows = [{"rejected_reasons": tally(["TRUNCATED", "NO_REPLY", "TRUNCATED"])}, {"rejected_reasons": ""},
            {"rejected_reasons": tally(["NO_REPLY"])}]
    assert rows[0]["rejected_reasons"] == "TRUNCATED:2; NO_REPLY:1"
    assert rejections(rows) == {"TRUNCATED": 2, "NO_REPLY": 2}


def test_ledger_per_client_view_adds_up_to_the_round_totals():
    from fedpress.metrics.ledger import BROADCAST, DOWN, UP

    ledger = Ledger(dense_bytes=100)
    ledger.record(0, DOWN, BROADCAST, 100, receivers=3)
    for client, n in ((1, 10), (2, 20), (5, 30)):
        ledger.record(0, UP, client, n)
    ledger.record(1, UP, 1, 7)
    per_client = ledger.per_client()
    assert per_client[1] == {"uplink_bytes": 17, "downlink_bytes": 0, "messages": 2}
    assert per_client[BROADCAST]["downlink_bytes"] == 100
    totals = ledger.round_totals(0)
    assert totals["uplink_bytes"] == 60 and totals["downlink_bytes"] == 300
    assert totals["downlink_broadcast_bytes"] == 100 and totals["dense_uplink_bytes"] == 300
    assert Ledger.from_rows(100, ledger.to_rows()).entries == ledger.entries
