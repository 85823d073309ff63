"""The fedpress ClientApp: a node runs the runtime core's client turn for its partition.

Each handler decodes what arrived, takes the node's algorithm state from `Context.state`
(`state.to_bytes`: JSON header, raw tensors, CRC-32; no pickle), runs `client_turns`
through the config's executor (the simulator's own function) and replies with the wire
frame in one Array. The asynchronous handler first brings the node's copy of QAFeL's x̂
up to the start's version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedpress.flower.messages import COPY_KEY, read_catchup, reply_content
from fedpress.flower.records import WIRE_KEY, load_state, save_state, wire_bytes
from fedpress.runtime import downlink
from fedpress.runtime.downlink import Catchup
from fedpress.runtime.executor import EXECUTORS
from fedpress.runtime.experiment import Experiment
from fedpress.runtime.turn import Turn, client_context, client_turns
from fedpress.wire import decode


def client_state(exp: Experiment, context: Context) -> Any:
    """The node's algorithm state from Context.state, or the algorithm's initial one."""
    found, state = load_state(context)
    return state if found else exp.algorithm.init_client(exp.model.layout)


def turn_of(exp: Experiment, context: Context, turn: Turn):
    """The node's turn through the sequential executor (a node trains its one client; the
    federation's parallelism is Flower's nodes); its new state kept in Context.state."""
    [(reply, new_state)] = client_turns(exp, [turn], EXECUTORS["sequential"].of(exp))
    if new_state is not None:
        save_state(context, new_state)
    return reply


def sync_copy(exp: Experiment, context: Context, c: Catchup, add=downlink.add_q) -> torch.Tensor:
    """The node's copy of x̂ (Context.state) brought from c.base to c.version by the frames
    alone; a node that holds no copy starts from nothing, or from x0 rebuilt from the run
    seed (init = "seeded"). A catch-up from a version the node does not hold is an error
    (the server then sends x̂ whole next time); x̂ whole replaces whatever it holds."""
    found, synced = load_state(context, COPY_KEY)
    if found:
        held, copy = int(synced["version"]), synced["copy"]
    else:
        seeded = exp.downlink is not None and exp.downlink.seeded
        held, copy = (0, exp.x0) if seeded else (downlink.NONE, None)
    if c.form != "whole" and c.base != held:  # x̂ whole replaces whatever the node holds
        raise RuntimeError(f"client {int(context.node_config['partition-id'])}: holds x̂ of version {held}, "
                           f"the catch-up is from version {c.base}")
    x = downlink.apply(copy, c, exp.wire, add)
    save_state(context, {"copy": x, "version": c.version}, COPY_KEY)
    return x


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
        if (catchup := read_catchup(msg.content)) is not None:  # [downlink]: the node's x̂, caught up
            received = sync_copy(exp, context, catchup)
        else:
            received = decode(wire_bytes(msg.content[WIRE_KEY]), exp.wire).expand(exp.wire) \
                if WIRE_KEY in msg.content else None
        reply = turn_of(exp, context, Turn(c, client_state(exp, context), received, t))
        return Message(reply_content(reply), reply_to=msg)

    @app.train("fedpress_async")
    def train_async(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        return start(source(context), msg, context)

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


def start(exp: Experiment, msg: Message, context: Context) -> Message:
    """One asynchronous start at a node: catch x̂ up (QAFeL), train from what the start
    brought, reply Q_c(Δ) with the version it trained from."""
    alg, layout = exp.algorithm, exp.wire
    c = int(context.node_config["partition-id"])
    head = msg.content["config"]
    version, seq = int(head["version"]), int(head["seq"])

    catchup = read_catchup(msg.content)  # QAFeL: the node's x̂ brought to this version
    copy = sync_copy(exp, context, catchup, alg.apply_broadcast) if catchup is not None else None
    received = decode(wire_bytes(msg.content[WIRE_KEY]), layout).expand(layout) if WIRE_KEY in msg.content else copy
    if received is None:
        raise RuntimeError(f"client {c}: the start brought no model and the node holds no synced state")
    # the start's number names its random streams; the lr is the one of the version it starts from
    reply = turn_of(exp, context, Turn(c, client_state(exp, context), received, seq, version))
    return Message(reply_content(reply, version=version, seq=seq), reply_to=msg)
