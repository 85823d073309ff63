"""The Flower server loops over a Grid held in this process: the real ClientApp on each node,
with its own Context, and a message order, lost nodes and corrupt replies chosen by the test.

What runs here is everything of fedpress.flower but Flower's transport: the synchronous
fleet (`GridClients`), the real-time asynchronous loop (`GridAsync`), and the ClientApp's
handlers. Flower's runtimes themselves run in test_simulation.py and test_deployment.py.
"""

import csv
import uuid

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, Context, Error, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedpress import wire  # noqa: E402
from fedpress.flower import FixedSource, client_app  # noqa: E402
from fedpress.flower.apps import serve  # noqa: E402
from fedpress.flower.messages import PARTITION  # noqa: E402
from fedpress.flower.records import WIRE_KEY, wire_bytes, wire_record  # noqa: E402
from fedpress.layout import Layout  # noqa: E402
from fedpress.runtime.outputs import RunDirectory  # noqa: E402
from fedpress.runtime.transport import dense_frame_bytes  # noqa: E402
from fedpress.sim import asynchronous, setup  # noqa: E402
from fedpress.wire.message import Dense  # noqa: E402
from fedpress.wire.message import Message as WireMessage  # noqa: E402
from tests.sim.conftest import tiny_config  # noqa: E402
from tests.sim.test_async import QAFEL, async_config  # noqa: E402


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's Message reads the process's task identity, which its runtimes set."""
    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


class LocalGrid:
    """A Grid whose nodes are the ClientApp called in this process. Replies come one per
    pull, first pushed first answered (the virtual clock's order with constant durations).
    `dead` nodes never answer; `tamper(client, reply)` may rewrite a reply on its way."""

    def __init__(self, app, num_clients: int, dead=(), tamper=None):
        self.app, self.tamper = app, tamper
        self.node_of = {c: 7001 + 13 * c for c in range(num_clients)}  # node ids are not partition ids
        self.contexts = {n: Context(1, n, {"partition-id": c, "num-partitions": num_clients}, RecordDict(), {})
                         for c, n in self.node_of.items()}
        self.dead = {self.node_of[c] for c in dead}
        self.queue: list[Message] = []
        self.pushed = 0
        self.answered = 0

    def clock(self) -> float:
        """This grid's time: one second per answer, so timeouts do not depend on the machine."""
        return float(self.answered)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            m.metadata.__dict__["_src_node_id"] = 1
            self.queue.append(m)
            ids.append(m.metadata.message_id)
        self.pushed += len(ids)
        return ids

    def answer(self, m: Message) -> Message:
        self.answered += 1
        node = m.metadata.dst_node_id
        try:
            reply = self.app(m, self.contexts[node])
        except Exception as e:  # as Flower does: the ClientApp's exception comes back as an error reply
            reply = Message(Error(2, repr(e)), reply_to=m)
        if self.tamper is None or reply.has_error():
            return reply
        return self.tamper(self.contexts[node].node_config["partition-id"], reply)

    def alive(self, m: Message) -> bool:
        return m.metadata.dst_node_id not in self.dead or m.metadata.message_type == PARTITION

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        for m in self.queue:
            if m.metadata.message_id in wanted and self.alive(m):
                self.queue.remove(m)
                return [self.answer(m)]
        return []

    def send_and_receive(self, messages, *, timeout=None):
        ids = set(self.push_messages(messages))
        out = []
        for m in [m for m in self.queue if m.metadata.message_id in ids]:
            if self.alive(m):
                self.queue.remove(m)
                out.append(self.answer(m))
        return out


def rows(path, drop=("wall_seconds", "virtual_time", "flower_uplink_bytes", "flower_downlink_bytes", "lost")):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def ledger(path):
    with open(path) as f:
        return [r for r in csv.DictReader(f)]


def on_grid(cfg, out, **grid_options):
    exp = setup(cfg)
    grid = LocalGrid(client_app(FixedSource(exp)), cfg.data.num_clients, **grid_options)
    return serve(grid, exp, out, clock=grid.clock), grid


# ---------------------------------------------------------------------------- asynchronous


CONSTANT = {"async.duration": "constant", "rounds": 8, "eval_every": 4}


def test_fedbuff_on_the_grid_equals_the_virtual_clock(synthetic, one_thread, tmp_path):
    """First pushed, first answered is the virtual clock's order when every start lasts the
    same: the same starts, picks, staleness, bytes and model, bit for bit."""
    cfg = async_config(**CONSTANT)
    virtual = asynchronous.run(cfg, tmp_path / "virtual", progress=False)
    flower, _ = on_grid(cfg, tmp_path / "grid")
    assert rows(tmp_path / "grid" / "metrics.csv") == rows(tmp_path / "virtual" / "metrics.csv")
    assert ledger(tmp_path / "grid" / "ledger.csv") == ledger(tmp_path / "virtual" / "ledger.csv")
    assert flower["final_accuracy"] == virtual["final_accuracy"] and flower["clock"] == "real"
    assert flower["mean_staleness"] == virtual["mean_staleness"] > 0  # the staleness the replies carried


@pytest.mark.parametrize("server_quantizer", ["qsgd", "fp32"])
def test_qafel_nodes_catch_up_lazily_and_train_from_the_servers_hidden_state(synthetic, one_thread, tmp_path,
                                                                             server_quantizer):
    """A node is caught up from the version of x̂ it holds when it next starts, as the virtual
    clock's clients are (runtime/downlink.py): it trains from the same x̂, so every upload,
    the model, the accuracy and every downlink byte equal the virtual clock's."""
    cfg = async_config(**{**CONSTANT, **QAFEL, "algorithm.server_quantizer": server_quantizer})
    asynchronous.run(cfg, tmp_path / "virtual", progress=False)
    flower, _ = on_grid(cfg, tmp_path / "grid")
    assert rows(tmp_path / "grid" / "metrics.csv", drop=("wall_seconds", "virtual_time", "flower_uplink_bytes",
                                                          "flower_downlink_bytes", "lost")) \
        == rows(tmp_path / "virtual" / "metrics.csv", drop=("wall_seconds", "virtual_time"))
    assert flower["rejected_updates"] == 0
    grid_ledger, virtual_ledger = ledger(tmp_path / "grid" / "ledger.csv"), ledger(tmp_path / "virtual" / "ledger.csv")
    assert grid_ledger == virtual_ledger
    joins = [e for e in grid_ledger if e["direction"] == "join"]
    assert len(joins) == len({e["client"] for e in joins})  # x̂ whole, once, to every client that took part
    catch_up = [int(e["bytes"]) for e in grid_ledger if e["direction"] == "down"]
    dense = dense_frame_bytes(setup(cfg).wire)
    assert catch_up and max(catch_up) <= dense
    if server_quantizer != "fp32":  # 8-level q's cost a fraction of x̂ (fp32 q's: the max above is the bound)
        assert min(catch_up) < dense / 3


def test_a_node_that_dies_is_given_up_after_the_timeout_and_the_run_finishes(synthetic, one_thread, tmp_path):
    cfg = async_config(**{**CONSTANT, "round_timeout": 10})  # ten answers of the others
    flower, grid = on_grid(cfg, tmp_path / "grid", dead=[8])  # one of the first four started
    table = rows(tmp_path / "grid" / "metrics.csv", drop=())
    assert flower["server_steps"] == cfg.rounds and flower["rejections"] == {"NO_REPLY": 1}
    assert int(table[-1]["lost"]) == 1
    entries_of_8 = [e for e in ledger(tmp_path / "grid" / "ledger.csv") if e["client"] == "8"]
    assert [e["direction"] for e in entries_of_8] == ["down"]  # its one download; it is never started again
    assert flower["final_accuracy"] > 0.5  # four classes: chance is 0.25


def frame_of_another_layout() -> bytes:
    other = Layout.flat(3)
    return wire.encode(WireMessage(3, Dense(torch.ones(3))), other)


def tamper_with(client: int, reply: Message) -> Message:
    """Client 1 truncates its frame, client 2 sends bytes that are no fedpress frame,
    client 3 a frame for another layout (from the second message each sends on)."""
    if WIRE_KEY not in reply.content or client not in (1, 2, 3):
        return reply
    data = wire_bytes(reply.content[WIRE_KEY])
    if client == 1:
        reply.content[WIRE_KEY] = wire_record(data[: len(data) // 2])
    elif client == 2:
        junk = b"\x00not fedpress" * 8
        reply.content[WIRE_KEY] = ArrayRecord({"frame": Array(dtype="bytes", shape=(len(junk),),
                                                              stype="numpy.ndarray", data=junk)})
    else:
        reply.content[WIRE_KEY] = wire_record(frame_of_another_layout())
    return reply


def test_corrupt_replies_are_rejected_by_name_counted_and_never_aggregated_async(synthetic, one_thread, tmp_path):
    cfg = async_config(**CONSTANT)
    flower, _ = on_grid(cfg, tmp_path / "grid", tamper=tamper_with)
    reasons = flower["rejections"]
    assert set(reasons) == {"TRUNCATED", "BAD_MAGIC", "LAYOUT_MISMATCH"} and all(n >= 1 for n in reasons.values())
    assert flower["server_steps"] == cfg.rounds and flower["final_accuracy"] > 0.5
    ups = [e for e in ledger(tmp_path / "grid" / "ledger.csv") if e["direction"] == "up"]
    assert len(ups) == flower["uploads"]  # the bad bytes arrived: they are counted
    table = rows(tmp_path / "grid" / "metrics.csv")
    assert sum(int(r["clients"]) for r in table) == flower["uploads"] - flower["rejected_updates"]  # never used


# ---------------------------------------------------------------------------- synchronous


def test_corrupt_replies_are_rejected_by_name_counted_and_never_aggregated(synthetic, one_thread, tmp_path):
    """Bad bytes are aggregated exactly as no reply at all: the same model as when those
    three nodes are silent, every round."""
    cfg = tiny_config(rounds=2, clients_per_round=12, checkpoint_every=0, **{"data.num_clients": 12})
    flower, _ = on_grid(cfg, tmp_path / "grid", tamper=tamper_with)
    silent, _ = on_grid(cfg, tmp_path / "silent", dead=[1, 2, 3])
    table, reference = rows(tmp_path / "grid" / "metrics.csv"), rows(tmp_path / "silent" / "metrics.csv")
    assert [r["rejected_reasons"] for r in table] == ["TRUNCATED:1; BAD_MAGIC:1; LAYOUT_MISMATCH:1"] * 2
    assert [r["clients"] for r in table] == ["9", "9"] and flower["rejected_updates"] == 6
    assert [(r["test_loss"], r["test_accuracy"]) for r in table] == \
        [(r["test_loss"], r["test_accuracy"]) for r in reference]
    up = [e for e in ledger(tmp_path / "grid" / "ledger.csv") if e["direction"] == "up"]
    assert len(up) == 2 * 12  # every reply's bytes were counted, the bad ones too


def test_a_dead_node_is_left_out_of_each_round_and_counted(synthetic, one_thread, tmp_path):
    cfg = tiny_config(rounds=2, clients_per_round=12, checkpoint_every=0, **{"data.num_clients": 12})
    flower, _ = on_grid(cfg, tmp_path / "grid", dead=[4])
    table = rows(tmp_path / "grid" / "metrics.csv", drop=())
    assert [(r["clients"], r["lost"], r["rejected_reasons"]) for r in table] == [("11", "1", "NO_REPLY:1")] * 2
    assert flower["rejections"] == {"NO_REPLY": 2}


def test_a_killed_asynchronous_run_resumes_from_its_last_checkpoint(synthetic, one_thread, tmp_path, monkeypatch):
    """Starts in flight when the server dies are lost (the nodes' replies have no one to go
    to); the resumed run keeps every step up to its checkpoint and finishes the rest."""
    cfg = async_config(**{**CONSTANT, **QAFEL, "checkpoint_every": 2})
    whole, _ = on_grid(cfg, tmp_path / "whole")

    after_row = RunDirectory.after_row

    def die_after_step_5(self, cfg, p, done):
        after_row(self, cfg, p, done)
        if p.round == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDirectory, "after_row", die_after_step_5)
    with pytest.raises(KeyboardInterrupt):
        on_grid(cfg, tmp_path / "resumed")
    monkeypatch.setattr(RunDirectory, "after_row", after_row)
    exp = setup(cfg)
    grid = LocalGrid(client_app(FixedSource(exp)), cfg.data.num_clients)  # new nodes: a new Flower run
    resumed = serve(grid, exp, tmp_path / "resumed", resume=True, clock=grid.clock)
    assert resumed["server_steps"] == cfg.rounds and resumed["rejected_updates"] == 0
    assert rows(tmp_path / "resumed" / "metrics.csv")[:4] == rows(tmp_path / "whole" / "metrics.csv")[:4]
    # the new nodes hold no x̂: each one's first start after the resume brings it whole (DOWN: they joined before)
    dense = dense_frame_bytes(exp.wire)
    entries = ledger(tmp_path / "resumed" / "ledger.csv")
    joined = {e["client"] for e in entries if e["direction"] == "join" and int(e["round"]) <= 4}
    first = {}
    for e in entries:
        if int(e["round"]) > 4 and e["direction"] in ("down", "join") and e["client"] in joined:
            first.setdefault(e["client"], e)
    assert first and all((e["direction"], int(e["bytes"])) == ("down", dense) for e in first.values())
    assert whole["server_steps"] == cfg.rounds


@pytest.mark.parametrize("node_config, says", [
    ({"partition-id": 0, "num-partitions": 3}, "num-partitions = 3, but the config's data.num_clients = 12"),
    ({"partition-id": 12, "num-partitions": 12}, "partition-id = 12 is not in [0, 12)"),
    ({}, "has no partition-id"),
])
def test_a_node_configured_for_another_split_is_named_at_discovery(synthetic, tmp_path, node_config, says):
    cfg = tiny_config(rounds=1, **{"data.num_clients": 12})
    exp = setup(cfg)
    grid = LocalGrid(client_app(FixedSource(exp)), cfg.data.num_clients)
    grid.contexts[grid.node_of[0]].node_config = node_config
    with pytest.raises(RuntimeError, match="could not say its partition") as e:
        serve(grid, exp, tmp_path)
    assert says in str(e.value)


def synchronous_algorithms() -> list[str]:
    from fedpress.algorithms.registry import REGISTRY

    return sorted(name for name, spec in REGISTRY.items() if spec.runtime == "rounds")


@pytest.mark.parametrize("name", synchronous_algorithms())
def test_every_synchronous_algorithm_gives_the_simulators_bytes_and_model_through_the_flower_apps(
        synthetic, one_thread, tmp_path, name):
    """DESIGN rule 4 over the whole registry: the ServerApp's fleet and the ClientApp's
    handlers (state in each node's Context.state, bytes in Flower Arrays) give the
    simulator's ledger and metrics bit for bit, with no line of the algorithm written twice."""
    from fedpress.sim import run

    cfg = tiny_config(rounds=3, clients_per_round=4, eval_every=1, checkpoint_every=0,
                      **{"algorithm.name": name, "train.momentum": 0.0, "data.num_clients": 6})
    reference = run(cfg, tmp_path / "sim", progress=False)
    flower, _ = on_grid(cfg, tmp_path / "grid")
    assert ledger(tmp_path / "grid" / "ledger.csv") == ledger(tmp_path / "sim" / "ledger.csv")
    assert rows(tmp_path / "grid" / "metrics.csv") == rows(tmp_path / "sim" / "metrics.csv")
    assert flower["final_accuracy"] == reference["final_accuracy"] and flower["rejected_updates"] == 0


@pytest.mark.parametrize("name, downlink", [
    ("topk_ef", {"downlink.codec": "top_k+fp16", "downlink.ratio": 0.1}),
    ("fedsparq", {"downlink.codec": "qsgd", "downlink.init": "seeded"}),
    ("flare", {"downlink.codec": "fp32"}),
])
def test_a_hidden_state_downlink_gives_the_simulators_bytes_and_model_through_the_flower_apps(
        synthetic, one_thread, tmp_path, name, downlink):
    """[downlink]: each node keeps its x̂ in Context.state and is caught up from the frames it
    receives; 10 clients, 3 a round, so most catch-ups span several versions."""
    from fedpress.sim import run

    cfg = tiny_config(rounds=5, clients_per_round=3, eval_every=1, checkpoint_every=0,
                      **{"algorithm.name": name, "data.num_clients": 10, **downlink})
    reference = run(cfg, tmp_path / "sim", progress=False)
    flower, _ = on_grid(cfg, tmp_path / "grid")
    sim_ledger = ledger(tmp_path / "sim" / "ledger.csv")
    assert ledger(tmp_path / "grid" / "ledger.csv") == sim_ledger
    assert rows(tmp_path / "grid" / "metrics.csv") == rows(tmp_path / "sim" / "metrics.csv")
    assert flower["final_accuracy"] == reference["final_accuracy"] and flower["rejected_updates"] == 0
    assert any(e["direction"] == "join" for e in sim_ledger) and any(e["direction"] == "down" for e in sim_ledger)


def misreport(client: int, reply: Message) -> Message:
    """Client 1 names a server version it was not sent; client 2 sends no loss and n_i."""
    if reply.metadata.message_type != "train.fedpress_async":
        return reply
    if client == 1:
        reply.content["config"]["version"] = int(reply.content["config"]["version"]) + 1
    if client == 2:
        del reply.content["metrics"]
    return reply


def test_replies_that_misreport_are_rejected_by_name_and_their_bytes_still_counted(synthetic, one_thread, tmp_path):
    cfg = async_config(**CONSTANT)
    flower, _ = on_grid(cfg, tmp_path / "grid", tamper=misreport)
    assert set(flower["rejections"]) == {"VERSION_MISMATCH", "BAD_METRICS"}, flower["rejections"]
    table = rows(tmp_path / "grid" / "metrics.csv", drop=())
    ups = [e for e in ledger(tmp_path / "grid" / "ledger.csv") if e["direction"] == "up"]
    assert len(ups) == flower["uploads"]  # every frame that crossed, used or not
    # never aggregated: the steps took only the others' updates
    assert sum(int(r["clients"]) for r in table) == flower["uploads"] - flower["rejected_updates"]


def failing_mod(msg, context, call_next):
    """Every start fails on client 0 (an error with no reason) and on client 3 (an exception)."""
    if msg.metadata.message_type == "train.fedpress_async":
        if context.node_config["partition-id"] == 0:
            return Message(Error(2), reply_to=msg)
        if context.node_config["partition-id"] == 3:
            raise RuntimeError("this node's disk is full")
    return call_next(msg, context)


def test_nodes_that_keep_failing_are_given_up_and_the_run_goes_on(synthetic, one_thread, tmp_path):
    cfg = async_config(**CONSTANT)
    exp = setup(cfg)
    grid = LocalGrid(client_app(FixedSource(exp), mods=[failing_mod]), cfg.data.num_clients)
    flower = serve(grid, exp, tmp_path, clock=grid.clock)
    starts = [e["client"] for e in ledger(tmp_path / "ledger.csv") if e["direction"] == "down"]
    assert flower["server_steps"] == cfg.rounds
    assert flower["rejections"] == {"CLIENT_ERROR": starts.count("0") + starts.count("3")}
    assert starts.count("0") == 3 and starts.count("3") <= 3  # three errors in a row, then never again
    assert int(rows(tmp_path / "metrics.csv", drop=())[-1]["lost"]) == 1 + (starts.count("3") == 3)


def test_a_run_whose_every_node_fails_stops_with_a_clear_error(synthetic, one_thread, tmp_path):
    def always_fails(msg, context, call_next):
        return Message(Error(2, "boom"), reply_to=msg) if msg.metadata.message_type.startswith("train") \
            else call_next(msg, context)

    cfg = async_config(**CONSTANT)
    exp = setup(cfg)
    grid = LocalGrid(client_app(FixedSource(exp), mods=[always_fails]), cfg.data.num_clients)
    with pytest.raises(RuntimeError, match="no client left to train after 0 server steps: 12 of 12"):
        serve(grid, exp, tmp_path, clock=grid.clock)


def test_a_message_flower_cannot_take_is_not_counted_and_its_node_is_given_up(synthetic, one_thread, tmp_path):
    class Refusing(LocalGrid):
        def push_messages(self, messages):
            messages = list(messages)
            if messages[0].metadata.dst_node_id == self.node_of[8]:
                return []  # as Flower's grids do when the message cannot be stored or is too large
            return super().push_messages(messages)

    cfg = async_config(**{**CONSTANT, **QAFEL})
    exp = setup(cfg)
    grid = Refusing(client_app(FixedSource(exp)), cfg.data.num_clients)
    flower = serve(grid, exp, tmp_path, clock=grid.clock)
    assert flower["server_steps"] == cfg.rounds and flower["rejected_updates"] == 0
    assert not [e for e in ledger(tmp_path / "ledger.csv") if e["client"] == "8"]  # its x̂ never left
