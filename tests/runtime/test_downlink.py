"""The hidden-state downlink with catch-up (runtime/downlink.py), alone and in the simulator."""

import csv

import pytest
import torch

from fedpress import wire
from fedpress.compress import chain, fp16, qsgd, top_k
from fedpress.config import from_dict
from fedpress.errors import ConfigError
from fedpress.layout import Layout
from fedpress.metrics.ledger import JOIN, UP
from fedpress.rng import derive
from fedpress.runtime import downlink
from fedpress.runtime.downlink import NONE, Catchup, Replicas
from fedpress.runtime.executor import Sequential
from fedpress.sim import run, run_round, setup
from fedpress.sim.clients import InProcessClients
from fedpress.sim.rounds import fresh
from tests.sim.conftest import tiny_config

LAYOUT = Layout.from_shapes([("w", (40, 10)), ("b", (10,))])


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int32)


def history(codec, versions=12, seed=0):
    """A server whose model x moves a little each step; x̂ follows through q = C(x − x̂).
    Returns the final HiddenState and x̂ of every version."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(LAYOUT.numel, generator=g)
    hs = downlink.start(x.clone(), LAYOUT)
    seen = [hs.x_hat.clone()]
    for v in range(versions):
        x = x + 0.05 * torch.randn(LAYOUT.numel, generator=g)
        hs, _ = downlink.encode_step(hs, x, codec, LAYOUT, derive(seed, "downlink", v))
        seen.append(hs.x_hat.clone())
    return hs, seen


CODECS = {"top_k 2% fp16": chain(top_k(0.02), fp16()), "qsgd": qsgd(15, 64), "top_k 30%": top_k(0.3)}


@pytest.mark.parametrize("name", CODECS)
def test_every_form_rebuilds_the_servers_hidden_state_bit_for_bit(name):
    hs, seen = history(CODECS[name])
    server = downlink.Server(hs, LAYOUT)
    for base in range(hs.version + 1):
        forms = [Catchup("changed", base, hs.version, (server.changed(base),)),
                 Catchup("whole", base, hs.version, (server.whole(),))]
        if (qs := server.missed(base)) is not None:
            forms.append(Catchup("q", base, hs.version, qs))
        for c in forms:
            assert torch.equal(bits(downlink.apply(seen[base].clone(), c, LAYOUT)), bits(hs.x_hat)), (base, c.form)


@pytest.mark.parametrize("name", CODECS)
def test_catch_up_sends_the_smallest_exact_form(name):
    hs, _ = history(CODECS[name])
    for base in range(hs.version):
        hs.held[7] = base
        server = downlink.Server(hs, LAYOUT)
        sizes = {"changed": len(server.changed(base)), "whole": len(server.whole())}
        if (qs := server.missed(base)) is not None:
            sizes["q"] = sum(map(len, qs))
        got = server.catch_up(7)
        assert got.nbytes == min(sizes.values()), (base, got.form, sizes)
        assert server.hs.held[7] == hs.version  # recorded in the new state
        assert hs.held[7] == base  # the state it started from is left as it was


def test_sparse_changes_make_the_changed_coordinates_cheaper_than_the_missed_qs():
    # top-k of x − x̂ keeps choosing the same few coordinates when only they move
    x = torch.zeros(LAYOUT.numel)
    hs = downlink.start(x.clone(), LAYOUT)
    for v in range(20):
        x[:5] += 1.0
        hs, _ = downlink.encode_step(hs, x, top_k(k=5), LAYOUT, derive(0, "downlink", v))
    hs.held[1] = 0
    got = downlink.Server(hs, LAYOUT).catch_up(1)
    assert got.form == "changed"
    assert got.nbytes < sum(map(len, hs.frames.values()))


def test_a_client_that_never_held_the_model_gets_it_whole_or_rebuilds_it_from_the_seed():
    hs, seen = history(CODECS["top_k 2% fp16"])
    got = downlink.Server(hs, LAYOUT).catch_up(3)
    assert (got.form, got.base, got.first) == ("whole", NONE, True)
    hs2 = downlink.start(seen[0], LAYOUT, seeded=True)
    for frame in (hs.frames[v] for v in range(1, hs.version + 1)):  # all kept: they are small
        hs2 = downlink.advance(hs2, frame, wire.decode(frame, LAYOUT), LAYOUT)
    seeded = downlink.Server(hs2, LAYOUT).catch_up(3)
    assert seeded.base == 0 and seeded.first and seeded.nbytes < got.nbytes
    assert torch.equal(bits(downlink.apply(seen[0].clone(), seeded, LAYOUT)), bits(hs2.x_hat))


def test_kept_qs_cost_less_than_the_model_whole():
    hs, _ = history(qsgd(15, 64), versions=40)
    assert 0 < sum(map(len, hs.frames.values())) < hs.dense
    assert max(hs.frames) == hs.version


def test_post_counts_each_frame_once_per_round_and_per_receiving_client():
    from fedpress.metrics.ledger import Ledger
    from fedpress.runtime.transport import Transport

    hs, _ = history(CODECS["top_k 2% fp16"], versions=3)
    hs.held.update({1: 2, 2: 2, 3: 1})
    server = downlink.Server(hs, LAYOUT)
    catchups = {c: server.catch_up(c) for c in (1, 2, 3, 4)}  # 4 never held it: JOIN
    ledger = Ledger(hs.dense)
    downlink.post(catchups, Transport(ledger, LAYOUT), 0)
    per_client = sum(c.nbytes for c in catchups.values())
    totals = ledger.round_totals(0)
    assert totals["downlink_bytes"] == per_client
    distinct = {id(f): len(f) for c in catchups.values() for f in c.frames}
    assert totals["downlink_broadcast_bytes"] == sum(distinct.values())
    assert ledger.initial_totals(0)["initial_downlink_bytes"] == catchups[4].nbytes
    assert [e.direction for e in ledger.entries].count(JOIN) == 1


def test_a_catch_up_from_another_version_is_refused_by_the_client():
    hs, _ = history(CODECS["top_k 2% fp16"], versions=3)
    hs.held[1] = 1
    c = downlink.Server(hs, LAYOUT).catch_up(1)
    replicas = Replicas({1: 2}, {2: torch.zeros(LAYOUT.numel)})
    with pytest.raises(RuntimeError, match="holds x̂ of version 2, the catch-up is from version 1"):
        replicas.receive(1, c, LAYOUT)


# ---------------------------------------------------------------------------- in the simulator


def downlink_config(codec="top_k+fp16", init="whole", **overrides):
    return tiny_config(**{"rounds": 8, "data.num_clients": 12, "clients_per_round": 3,
                          "algorithm.name": "topk_ef", "algorithm.ratio": 0.1, "algorithm.precision": "fp16",
                          "downlink.codec": codec, "downlink.ratio": 0.1, "downlink.init": init, **overrides})


@pytest.mark.parametrize("init", ["whole", "seeded"])
def test_each_clients_hidden_state_rebuilt_from_its_bytes_alone_equals_the_servers(synthetic, init):
    cfg = downlink_config(init=init)
    exp = setup(cfg)
    p = fresh(exp)
    received: dict[int, list[Catchup]] = {}
    with Sequential() as executor:
        for t in range(cfg.rounds):
            fleet = InProcessClients(exp, p.clients, executor, p.replicas)
            train = fleet.train

            def recording(round_, downlinks, train=train):
                for c, catchup in downlinks.items():
                    received.setdefault(c, []).append(catchup)
                return train(round_, downlinks)

            fleet.train = recording
            from fedpress.sim.rounds import server_round
            server_round(exp, p, fleet, t)
            for c, catchups in received.items():  # every client that ever received, rebuilt from nothing
                copy = exp.x0.clone() if init == "seeded" else None
                for catchup in catchups:
                    copy = downlink.apply(copy, catchup, exp.wire)
                if catchups[-1].version == p.hidden.version:
                    assert torch.equal(bits(copy), bits(p.hidden.x_hat)), (t, c)
    counts = sorted(len(v) for v in received.values())
    assert counts[0] == 1 and counts[-1] >= 3  # rarely and often sampled clients both checked
    assert {c.form for v in received.values() for c in v} >= {"q", "whole" if init == "whole" else "changed"}


def test_identity_codec_is_todays_dense_run_bit_for_bit(synthetic):
    ps, exps = [], []
    for extra in ({}, {"downlink.codec": "fp32"}):
        exp = setup(tiny_config(**{"algorithm.name": "topk_ef", "algorithm.ratio": 0.1, **extra}))
        exps.append(exp)
        ps.append(fresh(exp))
    dense, hidden = ps
    assert exps[0].downlink is None and exps[1].downlink is not None
    for t in range(exps[0].config.rounds):
        before = exps[1].algorithm.model(hidden.server).clone()
        a, b = (run_round(exp, p, Sequential(), t) for exp, p in zip(exps, ps, strict=True))
        assert torch.equal(bits(exps[0].algorithm.model(dense.server)), bits(exps[1].algorithm.model(hidden.server)))
        # with C the identity, x̂ is x_t exactly: the clients trained from the dense run's model
        assert torch.equal(bits(hidden.hidden.x_hat), bits(before)), t
        same = ("test_accuracy", "test_loss", "train_loss", "uplink_bytes", "rejected")
        assert [a.get(k) for k in same] == [b.get(k) for k in same], t
        assert b["downlink_bytes"] <= a["downlink_bytes"]  # never more than the dense model to each client
    up = [[(e.round, e.client, e.nbytes) for e in p.ledger.entries if e.direction == UP] for p in ps]
    assert up[0] == up[1]


def csv_rows(run_dir, name="metrics.csv"):
    with open(run_dir / name) as f:
        return list(csv.DictReader(f))


def test_compressed_downlink_cuts_downlink_bytes_and_still_learns(synthetic, tmp_path):
    dense = run(downlink_config(codec="fp32"), tmp_path / "dense", progress=False)
    small = run(downlink_config(codec="top_k+fp16", init="seeded"), tmp_path / "small", progress=False)
    assert small["downlink_bytes"] * 3 < dense["downlink_bytes"]
    assert small["final_accuracy"] > 0.5


def test_resume_after_a_kill_with_a_hidden_state_downlink_is_bit_for_bit(synthetic, tmp_path):
    cfg = downlink_config(checkpoint_every=3)
    full = run(cfg, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    def kill_at_5(row):
        if row["round"] == 5:
            raise Killed

    with pytest.raises(Killed):
        run(cfg, tmp_path / "resumed", progress=False, on_round_end=kill_at_5)
    resumed = run(cfg, tmp_path / "resumed", progress=False, resume=True)
    for name in ("metrics.csv", "ledger.csv"):
        strip = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in csv_rows(tmp_path / "full", name)]
        again = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in csv_rows(tmp_path / "resumed", name)]
        assert strip == again, name
    assert {k: v for k, v in full.items() if k != "wall_seconds"} == \
        {k: v for k, v in resumed.items() if k != "wall_seconds"}


@pytest.mark.parametrize("name, says", [("scaffnew", "x̄"), ("sparsyfed", "non-zeros"), ("scaffold", "[x, c]")])
def test_methods_whose_downlink_is_not_the_model_refuse_the_table(synthetic, name, says):
    extra = {"train.momentum": 0.0} if name in ("scaffnew", "scaffold") else {}
    cfg = tiny_config(**{"algorithm.name": name, "downlink.codec": "top_k+fp16", **extra})
    with pytest.raises(ConfigError, match="downlink") as e:
        setup(cfg)
    assert says in str(e.value)


QAFEL_RAW = {"algorithm": {"name": "qafel"}, "data": {"num_clients": 10}, "async": {"concurrency": 5}}


def test_downlink_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="stage 'top_j'"):
        tiny_config(**{"downlink.codec": "top_j"})
    with pytest.raises(ConfigError, match="a chain is a selection"):
        tiny_config(**{"downlink.codec": "fp16+top_k"})
    with pytest.raises(ConfigError, match="downlink.init"):
        tiny_config(**{"downlink.init": "lazy"})
    with pytest.raises(ConfigError, match="downlink.ratio"):
        tiny_config(**{"downlink.ratio": 0.0})
    with pytest.raises(ConfigError, match=r"\[downlink\] of an asynchronous algorithm takes only `init`"):
        from_dict({**QAFEL_RAW, "downlink": {"codec": "fp16"}})
    assert from_dict({**QAFEL_RAW, "downlink": {"init": "seeded"}}).downlink.init == "seeded"


def test_fedbuff_keeps_no_hidden_state_to_seed(synthetic):
    from tests.sim.test_async import async_config

    with pytest.raises(ConfigError, match="fedbuff keeps none"):
        setup(async_config(**{"downlink.init": "seeded"}))


def test_a_fedavg_downlink_precision_and_a_downlink_table_are_one_too_many(synthetic):
    with pytest.raises(ConfigError, match="both set the downlink"):
        setup(tiny_config(**{"algorithm.downlink": "fp16", "downlink.codec": "fp16"}))


def test_the_resolved_config_keeps_the_downlink_table():
    import tomllib

    from fedpress.config import dumps

    cfg = tiny_config(**{"downlink.codec": "qsgd", "downlink.levels": 7})
    again = from_dict(tomllib.loads(dumps(cfg)))
    assert again.downlink == cfg.downlink and again == cfg
    assert tiny_config().downlink is None and "[downlink]" not in dumps(tiny_config())


def test_run_round_keeps_one_copy_per_version_held(synthetic):
    cfg = downlink_config()
    exp = setup(cfg)
    p = fresh(exp)
    for t in range(cfg.rounds):
        run_round(exp, p, Sequential(), t)
        assert set(p.replicas.copies) == set(p.replicas.held.values())
        assert p.replicas.held == p.hidden.held
