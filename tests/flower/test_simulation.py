"""fedpress algorithms on Flower's simulation engine give the simulator's bytes and model, bit for bit."""

import pytest

pytest.importorskip("flwr")

from fedpress.flower import FixedSource, run_flower  # noqa: E402
from fedpress.sim import run, setup  # noqa: E402
from tests.sim.conftest import tiny_config  # noqa: E402
from tests.sim.test_async import QAFEL, async_config  # noqa: E402
from tests.sim.test_run import rows  # noqa: E402


def ledger_rows(path):
    return [r for r in (path / "ledger.csv").read_text().splitlines()]


# Each case starts Ray (about 15 s on an idle 2-core machine).
@pytest.mark.parametrize("algorithm", [
    {"name": "fedavg"},
    {"name": "topk_ef", "ratio": 0.05},
    {"name": "fedsparq"},  # per-layer EMA thresholds and residuals kept in Context.state
    {"name": "flare", "keep_percent": 5.0},
    {"name": "scaffnew"},  # the server's reply to the uploaders, and control variates in Context.state
    {"name": "topk_ef", "ratio": 0.05, "downlink": "top_k+fp16"},  # each node's x̂ in Context.state, caught up
], ids=lambda a: a["name"] + ("_downlink" if "downlink" in a else ""))
def test_flower_simulation_equals_the_simulator(synthetic, one_thread, tmp_path, algorithm):
    algorithm = dict(algorithm)
    down = {"downlink.codec": algorithm.pop("downlink"), "downlink.ratio": 0.1} if "downlink" in algorithm else {}
    overrides = {"rounds": 3, "data.num_clients": 4, "clients_per_round": 3, "checkpoint_every": 0,
                 **{f"algorithm.{k}": v for k, v in algorithm.items()}, **down}
    if down:  # 2 of 4 clients a round: catch-ups over several versions
        overrides.update({"rounds": 4, "clients_per_round": 2})
    if algorithm["name"] == "scaffnew":
        overrides["train.momentum"] = 0.0
    cfg = tiny_config(**overrides)
    reference = run(cfg, tmp_path / "sim", progress=False)
    exp = setup(cfg)
    flower = run_flower(cfg, tmp_path / "flower", exp=exp, source=FixedSource(exp), progress=False, cpus=2)
    assert ledger_rows(tmp_path / "flower") == ledger_rows(tmp_path / "sim")
    sim_rows, fl_rows = rows(tmp_path / "sim" / "metrics.csv"), rows(tmp_path / "flower" / "metrics.csv")
    for a, b in zip(sim_rows, fl_rows, strict=True):
        for key in ("test_accuracy", "test_loss", "train_loss", "uplink_bytes", "downlink_bytes", "clients"):
            assert a[key] == b[key], key
        assert int(b["flower_uplink_bytes"]) >= int(b["uplink_bytes"])  # the frames, plus record keys
    assert flower["final_accuracy"] == reference["final_accuracy"]


def test_qafel_runs_asynchronously_on_flowers_engine(synthetic, one_thread, tmp_path):
    """Real time on Ray: starts pushed to keep 3 nodes busy, replies pulled as they come,
    QAFeL's hidden state kept in each node's Context.state and caught up from the q's it
    missed (a node whose x̂ disagreed with the server's version would answer an error)."""
    cfg = async_config(**{**QAFEL, "rounds": 6, "data.num_clients": 6, "async.concurrency": 3,
                          "checkpoint_every": 0})
    exp = setup(cfg)
    summary = run_flower(cfg, tmp_path, exp=exp, source=FixedSource(exp), progress=False, cpus=2)
    assert summary["clock"] == "real" and summary["server_steps"] == 6
    assert summary["rejected_updates"] == 0 and summary["uploads"] >= 6 * 3
    assert summary["final_accuracy"] > 0.5  # four classes: chance is 0.25
    with open(tmp_path / "ledger.csv") as f:
        entries = [line.split(",") for line in f.read().splitlines()[1:]]
    uploaders = {e[2] for e in entries if e[1] == "up"}
    assert {e[2] for e in entries if e[1] == "join"} >= uploaders  # x̂ whole before a node's first start


def tampering_mod(msg, context, call_next):
    """A Flower client mod between the ClientApp and the wire: nodes 1, 2 and 3 send a
    truncated frame, bytes that are no fedpress frame, and a frame for another layout."""
    from tests.flower.test_grid import tamper_with

    reply = call_next(msg, context)
    return tamper_with(int(context.node_config["partition-id"]), reply) if reply.has_content() else reply


def test_corrupt_replies_over_flowers_engine_are_rejected_by_name_and_the_run_goes_on(synthetic, one_thread,
                                                                                     tmp_path):
    cfg = tiny_config(rounds=2, clients_per_round=4, eval_every=1, checkpoint_every=0, **{"data.num_clients": 4})
    exp = setup(cfg)
    summary = run_flower(cfg, tmp_path, exp=exp, source=FixedSource(exp), progress=False, cpus=2,
                         mods=[tampering_mod])
    table = rows(tmp_path / "metrics.csv")
    assert [r["rejected_reasons"] for r in table] == ["TRUNCATED:1; BAD_MAGIC:1; LAYOUT_MISMATCH:1"] * 2
    assert [r["clients"] for r in table] == ["1", "1"] and summary["rounds"] == 2
    assert summary["rejections"] == {"TRUNCATED": 2, "BAD_MAGIC": 2, "LAYOUT_MISMATCH": 2}
    assert all(int(r["uplink_bytes"]) > 0 for r in table)  # what arrived was counted
