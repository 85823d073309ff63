"""What fedpress's Flower messages hold, read and written in one place (server and client).

Messages (synchronous ones with group_id = the round):
    train                      server -> node: {"config": round, "fedpress": frame?}, or with a
                               [downlink] table the node's catch-up of x̂ (`catchup_content`)
                               node -> server: {"fedpress": frame} or {"config": refused}, {"metrics": loss, n}
    query.fedpress_partition   which partition (client id) a node holds
    query.fedpress_reply       the server's reply to the round's uploaders (Scaffnew's x_bar)
    train.fedpress_async       one start of FedBuff / QAFeL / Naive (see asynchronous.py):
                               server -> node: config {version, seq}; "fedpress": the start's
                               download; QAFeL: the node's catch-up of x̂ (`catchup_content`)
                               node -> server: as train, with config {version, seq}
"""

from __future__ import annotations

import sys
import time

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedpress.flower.records import WIRE_KEY, WIRE_STYPE, NotFedpress, wire_array, wire_bytes, wire_record
from fedpress.runtime.downlink import Catchup
from fedpress.runtime.rejections import Rejection
from fedpress.runtime.turn import ClientReply

TRAIN = MessageType.TRAIN
PARTITION = "query.fedpress_partition"
REPLY = "query.fedpress_reply"
TRAIN_ASYNC = "train.fedpress_async"
SYNC_KEY = "fedpress-sync"  # the frames of a catch-up of x̂ (runtime/downlink.py)
COPY_KEY = "fedpress-copy"  # Context.state: {"copy": x̂, "version": v}

# Flower's ErrorCode: 3 message unavailable, 4 reply unavailable, 5 node unavailable (failed heartbeats)
_LOST_CODES = {3, 4, 5}


def error_reason(reply: Message) -> str:
    """How an error reply is tallied: NO_REPLY when the node or its message was lost,
    CLIENT_ERROR when its ClientApp raised (the reason is logged)."""
    if reply.error.code in _LOST_CODES:
        return Rejection.NO_REPLY.name
    print(f"fedpress: node {reply.metadata.src_node_id} answered with error {reply.error.code}: "
          f"{(reply.error.reason or '')[-500:]}", file=sys.stderr)
    return Rejection.CLIENT_ERROR.name


def count_bytes(content: RecordDict) -> int:
    """Flower's own measure: the sum of count_bytes() over the message's records."""
    return sum(record.count_bytes() for record in content.values())


def parse_reply(content: RecordDict) -> ClientReply:
    """A Flower reply's content as a ClientReply. `refused` names why it is not used: what
    the client refused to send for, or BAD_METRICS for content that is not what the
    ClientApp sends (its frame, if any, still crossed the wire and is counted). `version`
    is what the reply's config says (asynchronous replies), checked by `runtime.accept`."""
    data = _frame_bytes(content)
    metrics = content.metric_records.get("metrics")
    config = content.config_records.get("config")
    version = config.get("version") if config is not None else None
    try:
        loss, n = float(metrics["loss"]), int(metrics["num-examples"])
    except (TypeError, KeyError, ValueError):  # no MetricRecord, or not its two entries
        return ClientReply(data, float("nan"), 0, Rejection.BAD_METRICS.name, version)
    if n < 0:
        return ClientReply(data, loss, 0, Rejection.BAD_METRICS.name, version)
    if data is None:
        refused = str(config.get("refused", Rejection.NO_UPDATE.name)) if config else Rejection.NO_UPDATE.name
        return ClientReply(None, loss, n, refused, version)
    return ClientReply(data, loss, n, "", version)


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


def catchup_content(content: RecordDict, c: Catchup) -> None:
    """A catch-up of x̂ into a message's content: its form and versions in the "config"
    record, its frames (in order) under SYNC_KEY, one Array each."""
    content["config"].update({"sync-form": c.form, "sync-base": c.base, "sync-version": c.version,
                              "sync-first": c.first})
    content[SYNC_KEY] = ArrayRecord({f"f{i:06d}": wire_array(frame) for i, frame in enumerate(c.frames)})


def read_catchup(content: RecordDict) -> Catchup | None:
    """What `catchup_content` wrote; None when the message carries no catch-up."""
    config = content.config_records.get("config")
    if config is None or "sync-form" not in config:
        return None
    record = content.array_records.get(SYNC_KEY, ArrayRecord())
    frames = []
    for name in sorted(record.keys()):  # f000000, f000001, ...: version order
        if record[name].stype != WIRE_STYPE:
            raise NotFedpress(f"catch-up frame {name!r} is not of stype {WIRE_STYPE!r}")
        frames.append(record[name].data)
    return Catchup(str(config["sync-form"]), int(config["sync-base"]), int(config["sync-version"]), tuple(frames),
                   bool(config["sync-first"]))


def addressee(reply: Message, sent: list[Message]) -> int | None:
    """The node a reply answers for: the SuperLink (node 1) answers for nodes it gave up on."""
    for m in sent:
        if m.metadata.message_id == reply.metadata.reply_to_message_id:
            return m.metadata.dst_node_id
    return None


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
