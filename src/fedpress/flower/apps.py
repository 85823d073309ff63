"""fedpress on Flower's runtime: a ServerApp and a ClientApp made of the simulator's parts.

Nothing of an algorithm is written again here. The ServerApp runs the simulator's own
loop (`sim.rounds.drive` -> `server_round`) over `GridClients`, a fleet whose clients are
Flower nodes reached through the `Grid`; the ClientApp runs the simulator's client steps
(`client_context`, `client_begin`, `local.train`, `finish`) for the node's partition.
Every message is the fedpress wire frame in one Array (`records.py`); a client's
algorithm state lives in its node's `Context.state` as state bytes.

Messages (all with group_id = the round):
    train                      server -> node: {"config": round, "fedpress": frame?}
                               node -> server: {"fedpress": frame} or {"config": refused}, {"metrics": loss, n}
    query.fedpress_partition   which partition (client id) a node holds
    query.fedpress_reply       the server's reply to the round's uploaders (Scaffnew's x_bar)
    train.fedpress_async       one start of FedBuff / QAFeL / Naive (see asynchronous.py)
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fedpress import local
from fedpress.config import Config, dumps, from_dict
from fedpress.sim.clients import ClientReply, client_context, client_job, finish, train_spec
from fedpress.sim.rounds import NO_REPLY, Experiment, drive, prepare, setup
from fedpress.wire import decode

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fedpress.flower.records import WIRE_KEY, NotFedpress, load_state, save_state, wire_bytes, wire_record  # noqa: E402

PARTITION = "query.fedpress_partition"
REPLY = "query.fedpress_reply"


# --- how a process gets its Experiment ---


class ConfigSource:
    """Builds the Experiment of a config in whatever process needs it (a Ray actor, a
    SuperNode's ClientApp process), once per process."""

    _cache: dict[str, Experiment] = {}

    def __init__(self, config_text: str):
        self.config_text = config_text

    @classmethod
    def of(cls, cfg: Config) -> ConfigSource:
        return cls(dumps(cfg))

    def __call__(self, context: Context | None = None) -> Experiment:
        if self.config_text not in self._cache:
            self._cache[self.config_text] = setup(from_dict(tomllib.loads(self.config_text)))
        return self._cache[self.config_text]


class FixedSource:
    """An Experiment built beforehand, carried to the client processes by value (tests,
    data that exists only in the driver)."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    def __call__(self, context: Context | None = None) -> Experiment:
        return self.exp


class RunConfigSource:
    """The Experiment named by the run config of `flwr run`: `config` (a TOML path) and
    `overrides` (space-separated dotted.key=value, as --set), built once per process."""

    _cache: dict[tuple[str, str], Experiment] = {}

    def __call__(self, context: Context | None = None) -> Experiment:
        key = (str(context.run_config["config"]), str(context.run_config.get("overrides", "")))
        if key not in self._cache:
            self._cache[key] = setup(config_of(context))
        return self._cache[key]


def config_of(context: Context) -> Config:
    from fedpress.config import load

    overrides = str(context.run_config.get("overrides", "")).split()
    return load(str(context.run_config["config"]), overrides)


# --- the server side ---


class GridClients:
    """The fleet of `server_round`, reached through Flower's Grid. Replies are matched to
    clients by node, and `server_round` takes them in client-id order whatever order they
    came in; a node that does not answer within `timeout` seconds is left out of the round."""

    def __init__(self, grid: Grid, exp: Experiment, timeout: float | None = None, wait: float = 600.0):
        self.grid, self.exp, self.timeout = grid, exp, timeout
        self.node_of = discover(grid, exp.config.data.num_clients, wait)  # {client: node_id}
        self.client_of = {n: c for c, n in self.node_of.items()}
        self.flower_bytes = {"up": 0, "down": 0, "lost": 0}  # this round's: Flower's count_bytes(), lost replies

    def train(self, round_: int, downlinks: dict[int, bytes | None]) -> dict[int, ClientReply]:
        self.flower_bytes = {"up": 0, "down": 0, "lost": 0}
        messages = []
        for c, data in downlinks.items():
            content = RecordDict({"config": ConfigRecord({"round": round_})})
            if data is not None:
                content[WIRE_KEY] = wire_record(data)
            self.flower_bytes["down"] += count_bytes(content)
            messages.append(Message(content, dst_node_id=self.node_of[c], message_type=MessageType.TRAIN,
                                    group_id=str(round_)))
        replies = {}
        for r in self.grid.send_and_receive(messages, timeout=self.timeout):
            c = self.client_of.get(r.metadata.src_node_id, self.client_of.get(_addressee(r, messages)))
            if c is None:
                continue
            if r.has_error():  # the ClientApp raised, or the SuperLink gave the node up
                replies[c] = ClientReply(None, float("nan"), 0, error_reason(r))
                continue
            self.flower_bytes["up"] += count_bytes(r.content)
            replies[c] = parse_reply(r.content)
        self.flower_bytes["lost"] = sum(1 for c in downlinks if c not in replies or replies[c].refused == NO_REPLY)
        return replies

    def reply(self, round_: int, clients: list[int], data: bytes) -> None:
        messages = [Message(RecordDict({"config": ConfigRecord({"round": round_}), WIRE_KEY: wire_record(data)}),
                            dst_node_id=self.node_of[c], message_type=REPLY, group_id=str(round_)) for c in clients]
        for m in messages:
            self.flower_bytes["down"] += count_bytes(m.content)
        list(self.grid.send_and_receive(messages, timeout=self.timeout))

    def annotate(self, row: dict) -> None:
        """Flower's own byte counts beside the ledger's, in the round's metrics row."""
        row.update(flower_uplink_bytes=self.flower_bytes["up"], flower_downlink_bytes=self.flower_bytes["down"],
                   lost=self.flower_bytes["lost"])


def _addressee(reply: Message, sent: list[Message]) -> int | None:
    """The node a reply answers for: the SuperLink (node 1) answers for nodes it gave up on."""
    for m in sent:
        if m.metadata.message_id == reply.metadata.reply_to_message_id:
            return m.metadata.dst_node_id
    return None


# Flower's ErrorCode: 3 message unavailable, 4 reply unavailable, 5 node unavailable (failed heartbeats)
_LOST_CODES = {3, 4, 5}


def error_reason(reply: Message) -> str:
    """How an error reply is tallied: NO_REPLY when the node or its message was lost,
    CLIENT_ERROR when its ClientApp raised (the reason is logged)."""
    if reply.error.code in _LOST_CODES:
        return NO_REPLY
    print(f"fedpress: node {reply.metadata.src_node_id} answered with error {reply.error.code}: "
          f"{(reply.error.reason or '')[-500:]}", file=sys.stderr)
    return "CLIENT_ERROR"


def count_bytes(content: RecordDict) -> int:
    """Flower's own measure: the sum of count_bytes() over the message's records."""
    return sum(record.count_bytes() for record in content.values())


def parse_reply(content: RecordDict) -> ClientReply:
    """A Flower reply's content as a ClientReply. `refused` names why it is not used: what
    the client refused to send for, or BAD_METRICS for content that is not what the
    ClientApp sends (its frame, if any, still crossed the wire and is counted)."""
    data = _frame_bytes(content)
    metrics = content.metric_records.get("metrics")
    try:
        loss, n = float(metrics["loss"]), int(metrics["num-examples"])
    except (TypeError, KeyError, ValueError):  # no MetricRecord, or not its two entries
        return ClientReply(data, float("nan"), 0, "BAD_METRICS")
    if n < 0:
        return ClientReply(data, loss, 0, "BAD_METRICS")
    if data is None:
        config = content.config_records.get("config")
        return ClientReply(None, loss, n, str(config.get("refused", "NO_UPDATE")) if config else "NO_UPDATE")
    return ClientReply(data, loss, n)


def _frame_bytes(content: RecordDict) -> bytes | None:
    """The reply's frame; the bytes of a record that is not fedpress's go to the strict decoder."""
    record = content.array_records.get(WIRE_KEY)
    if record is None:
        return None
    try:
        return wire_bytes(record)
    except (NotFedpress, TypeError):
        arrays = list(record.values())
        return arrays[0].data if arrays else b""


def reply_content(reply: ClientReply, **config) -> RecordDict:
    """A ClientReply as a Flower reply's content (what `parse_reply` reads back): the frame,
    or why there is none, the loss and n_i, and any `config` entries (the async version)."""
    content = RecordDict({"config": ConfigRecord(config),
                          "metrics": MetricRecord({"loss": reply.loss, "num-examples": reply.num_samples})})
    if reply.data is None:
        content["config"]["refused"] = reply.refused
    else:
        content[WIRE_KEY] = wire_record(reply.data)
    return content


def discover(grid: Grid, num_clients: int, wait: float) -> dict[int, int]:
    """{client id: node id}: wait for num_clients nodes, then ask each which partition it holds."""
    deadline = time.monotonic() + wait
    while len(nodes := sorted(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"flower: {len(nodes)} nodes connected after {wait:.0f} s; the config's "
                               f"data.num_clients = {num_clients} needs one node per client")
        time.sleep(0.1)
    asks = [Message(RecordDict({"config": ConfigRecord({"num-clients": num_clients})}), dst_node_id=n,
                    message_type=PARTITION, group_id="discover") for n in nodes]
    node_of = {}
    for r in grid.send_and_receive(asks, timeout=wait):
        if r.has_error():
            raise RuntimeError(f"flower: node {r.metadata.src_node_id} could not say its partition: {r.error.reason}")
        c = int(r.content["config"]["partition-id"])
        if c in node_of:
            raise RuntimeError(f"flower: nodes {node_of[c]} and {r.metadata.src_node_id} both hold partition {c}")
        node_of[c] = r.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(node_of))
    if missing:
        raise RuntimeError(f"flower: no node holds partition(s) {missing[:10]} of {num_clients}")
    return node_of


def server_app(exp: Experiment, out: str | Path | None = None, *, resume: bool = False, timeout: float | None = None,
               progress: bool = False, result: dict | None = None) -> ServerApp:
    """A ServerApp that runs the config's rounds over the connected nodes and writes the
    same run directory as the simulator; `result["summary"]` receives the summary."""
    app = ServerApp()
    result = {} if result is None else result

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result["summary"] = serve(grid, exp, out, resume=resume, timeout=timeout, progress=progress)

    return app


def serve(grid: Grid, exp: Experiment, out: str | Path | None, *, resume: bool = False, timeout: float | None = None,
          progress: bool = False, clock: Callable[[], float] = time.monotonic) -> dict:
    """The ServerApp's work: synchronous rounds over `GridClients`, or (FedBuff, QAFeL, Naive)
    the real-time asynchronous loop of `fedpress.flower.asynchronous` (`clock`: its seconds).
    Returns the summary."""
    timeout = timeout if timeout is not None else exp.config.round_timeout or None
    if exp.config.is_async:
        from fedpress.flower.asynchronous import run_async

        return run_async(grid, exp, out, resume=resume, timeout=timeout, progress=progress, clock=clock)
    out_dir, p = prepare(exp, out, resume)
    clients = GridClients(grid, exp, timeout)
    return drive(exp, p, clients, out_dir, progress=progress, on_round_end=clients.annotate)


# --- the client side ---


def client_state(exp: Experiment, context: Context) -> Any:
    """The node's algorithm state from Context.state, or the algorithm's initial one."""
    found, state = load_state(context)
    return state if found else exp.algorithm.init_client(exp.model.layout)


def client_app(source: Callable[..., Experiment], threads: int = 1, mods: Sequence = ()) -> ClientApp:
    """A ClientApp that trains the node's partition (`node_config["partition-id"]`) with the
    config's algorithm, its state kept in Context.state between rounds; `mods`: Flower
    client mods around every handler."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)  # one thread: the same floating-point sums as the simulator
        exp, c = source(context), int(context.node_config["partition-id"])
        t = int(msg.content["config"]["round"])
        state = client_state(exp, context)
        received = decode(wire_bytes(msg.content[WIRE_KEY]), exp.wire).expand(exp.wire) \
            if WIRE_KEY in msg.content else None
        ctx = client_context(exp, t, c)
        plan = exp.algorithm.client_begin(state, received, ctx)
        job = client_job(exp, plan, t, c)
        result = local.train(exp.model, plan, job.inputs, job.targets, train_spec(exp.config, t), job.rng)
        reply, new_state = finish(exp, state, plan, result, ctx)
        if new_state is not None:
            save_state(context, new_state)
        return Message(reply_content(reply), reply_to=msg)

    @app.train("fedpress_async")
    def train_async(msg: Message, context: Context) -> Message:
        from fedpress.flower.asynchronous import train_async

        torch.set_num_threads(threads)
        return train_async(source(context), msg, context)

    @app.query("fedpress_partition")
    def partition(msg: Message, context: Context) -> Message:
        n, node = int(msg.content["config"]["num-clients"]), context.node_config
        if "partition-id" not in node:
            raise ValueError(f"this SuperNode's --node-config has no partition-id; give it "
                             f"\"partition-id=<0..{n - 1}> num-partitions={n}\"")
        part = int(node["partition-id"])
        if "num-partitions" in node and int(node["num-partitions"]) != n:
            raise ValueError(f"this SuperNode's num-partitions = {node['num-partitions']}, but the config's "
                             f"data.num_clients = {n}: the data would be split differently")
        if not 0 <= part < n:
            raise ValueError(f"this SuperNode's partition-id = {part} is not in [0, {n}) (data.num_clients = {n})")
        return Message(RecordDict({"config": ConfigRecord({"partition-id": part})}), reply_to=msg)

    @app.query("fedpress_reply")
    def reply(msg: Message, context: Context) -> Message:
        exp, c = source(context), int(context.node_config["partition-id"])
        t = int(msg.content["config"]["round"])
        _, state = load_state(context)
        x = decode(wire_bytes(msg.content[WIRE_KEY]), exp.wire).expand(exp.wire)
        save_state(context, exp.algorithm.client_reply(state, x, client_context(exp, t, c)))
        return Message(RecordDict(), reply_to=msg)

    return app


# --- Flower's simulation engine ---


def run_flower(cfg: Config, out: str | Path | None = None, *, resume: bool = False, progress: bool = True,
               timeout: float | None = None, source: Callable[[], Experiment] | None = None,
               exp: Experiment | None = None, cpus: int | None = None, mods: Sequence = ()) -> dict[str, Any]:
    """`fedpress run --engine flower`: the config through Flower's simulation engine (Ray),
    one SuperNode per client, one CPU and one torch thread per ClientApp."""
    import logging

    from flwr.simulation import run_simulation

    exp = setup(cfg) if exp is None else exp
    result: dict = {}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    cpus = cpus or os.cpu_count() or 1
    run_simulation(
        server_app=server_app(exp, out, resume=resume, timeout=timeout, progress=progress, result=result),
        client_app=client_app(source or ConfigSource.of(cfg), mods=mods),
        num_supernodes=cfg.data.num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": cpus, "logging_level": "ERROR", "log_to_driver": False}},
    )
    if "summary" not in result:
        raise RuntimeError("flower: the ServerApp ended without finishing the run (see the log above)")
    return result["summary"]
