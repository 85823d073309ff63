"""FedBuff, QAFeL and Naive on Flower's Grid: buffered asynchronous FL in real time.

Flower has no buffered asynchronous aggregation; this is it, built on the Grid's two
non-blocking calls. The server pushes a `train.fedpress_async` message to keep
`async.concurrency` nodes busy (or starts one every 1/`async.rate` seconds), pulls replies
as they come, hands each to the same server code as the virtual-clock engine
(`sim.asynchronous.accept`), and takes a server step (`server_step`) whenever the
algorithm's buffer of K updates is full. The clock is real time since the run began.

    server -> node   config {version, seq, from}; "fedpress": the start's download (x, Q_s(x));
                     "fedpress-sync": QAFeL's hidden state x̂ whole ("join") or the
                     broadcasts q the node has not applied yet ("q000000012", ...)
    node -> server   config {version, seq}; "fedpress": Q_c(Δ); "metrics": loss, num-examples

Staleness is τ = the server's version now − the version carried in the reply (checked
against the one the server sent). The node's synced copy of x̂ and its version live in
Context.state, like every other client state.

QAFeL's broadcast, delivered lazily. The virtual-clock engine sends every q to every
joined client at once (spec §5.2), and its ledger counts each q once per receiver. Here
a node receives the q's it missed with its next start, in order, so an idle node costs
nothing and a node never holds two messages. Its x̂ is the same bit for bit when it
trains (it applies the same decoded q's in the same order). When the missed q's would
cost more than x̂ itself, the node gets x̂ whole instead (counted DOWN). The ledger counts
what crossed: each q once per node that received it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from fedpress import local, wire
from fedpress.algorithms import ClientContext, RoundContext
from fedpress.flower.apps import client_state, count_bytes, discover, error_reason, parse_reply, reply_content
from fedpress.flower.records import WIRE_KEY, load_state, save_state, wire_array, wire_bytes, wire_record
from fedpress.metrics.ledger import DOWN, JOIN, UP
from fedpress.rng import derive
from fedpress.sim import asynchronous as engine
from fedpress.sim.clients import ClientReply, client_job, finish, train_spec
from fedpress.sim.rounds import NO_REPLY, Experiment
from fedpress.sim.transport import dense_frame_bytes, post
from fedpress.wire import WireError, decode
from fedpress.wire.message import Message as WireMessage

TRAIN = "train.fedpress_async"
SYNC_KEY = "fedpress-sync"  # the message's record of x̂ or missed broadcasts
COPY_KEY = "fedpress-copy"  # Context.state: {"copy": x̂, "version": v}
POLL = 0.05  # seconds between pulls when nothing has come
MAX_ERRORS = 3  # error replies in a row after which a node is not started again


@dataclass(frozen=True)
class Pending:
    """A start in flight: its node's client, the server version it started from, its number."""

    client: int
    version: int
    seq: int
    sent: float  # monotonic seconds


class GridAsync:
    """The real-time clock over Flower's Grid, around the engine's server side."""

    def __init__(self, grid: Grid, exp: Experiment, p: engine.AsyncProgress, node_of: dict[int, int],
                 timeout: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.grid, self.exp, self.p, self.node_of, self.clock = grid, exp, p, node_of, clock
        self.cfg, self.acfg, self.alg, self.timeout = exp.config, exp.config.asynchronous, exp.algorithm, timeout
        self.pending: dict[str, Pending] = {}  # message id -> start
        self.lost: set[int] = set()  # clients whose node stopped answering: not started again
        self.errors: dict[int, int] = {}  # client -> error replies in a row (MAX_ERRORS: lost)
        self.held: dict[int, int] = {}  # client -> version of the x̂ its node holds (QAFeL; fresh on resume)
        self.history: dict[int, bytes] = {}  # version v -> the q that made x̂_v, while worth keeping
        self.dense = dense_frame_bytes(exp.wire)  # x̂ whole: the most catching up may cost
        self.flower_bytes = {"up": 0, "down": 0}
        self.t0 = clock() - p.now  # a resumed run's clock goes on from its checkpoint

    # ------------------------------------------------------------ starts

    def busy(self) -> set[int]:
        return {f.client for f in self.pending.values()}

    def start_idle(self) -> None:
        """Start one idle, live client drawn uniformly from the run's seed (none: skipped)."""
        busy = self.busy()
        idle = [c for c in sorted(self.node_of) if c not in busy and c not in self.lost]
        if not idle:
            return
        pick = int(torch.randint(len(idle), (1,), generator=derive(self.cfg.seed, "pick", self.p.started)))
        self.start(idle[pick])

    def start(self, client: int) -> None:
        """What the client downloads (counted), pushed as one message."""
        p, alg, wire_layout = self.p, self.alg, self.exp.wire
        seq, t = p.started, p.round
        p.started += 1
        lr = self.cfg.train.lr_at(t, self.cfg.rounds)
        cctx = ClientContext(seq, client, int(self.exp.parts[client].numel()), self.cfg.seed, self.exp.model, lr)
        # what start() counts and marks is undone if Flower cannot take the message
        counted, held, joined = len(p.ledger.entries), dict(self.held), bool(p.joined[client])
        content = RecordDict({"config": ConfigRecord({"version": t, "seq": seq, "from": self.held.get(client, -1)})})
        sync = self.sync_frames(client)
        if sync:
            content[SYNC_KEY] = ArrayRecord({name: wire_array(data) for name, data in sync.items()})
        down, p.server = alg.dispatch(p.server, cctx)
        if down is not None:
            content[WIRE_KEY] = wire_record(post(down, wire_layout, p.ledger, t, DOWN, client))
        self.flower_bytes["down"] += count_bytes(content)
        message = Message(content, dst_node_id=self.node_of[client], message_type=TRAIN, group_id=str(seq))
        ids = list(self.grid.push_messages([message]))
        if len(ids) != 1 or not ids[0]:  # Flower could not take it: nothing crossed, and the node is given up
            del p.ledger.entries[counted:]
            self.held, p.joined[client] = held, joined
            self.lose(client, "could not be sent a message (Flower refused it)")
            return
        self.pending[ids[0]] = Pending(client, t, seq, self.clock())

    def sync_frames(self, client: int) -> dict[str, bytes]:
        """QAFeL: x̂ whole for a node that holds none (first time: JOIN; again: DOWN), else
        the q's it has not applied, or x̂ whole when they would cost more."""
        p, t = self.p, self.p.round
        first = self.alg.join(p.server, RoundContext(t, self.cfg.seed, (client,), self.exp.model,
                                                     self.cfg.data.num_clients))
        if first is None:
            return {}  # FedBuff, Naive: the dispatch carries everything
        held = self.held.get(client)
        missed = range(held + 1, t + 1) if held is not None else range(0)
        if held is not None and all(v in self.history for v in missed) and \
                sum(len(self.history[v]) for v in missed) < self.dense:
            for v in missed:
                p.ledger.record(t, DOWN, client, len(self.history[v]))
            self.held[client] = t
            return {f"q{v:09d}": self.history[v] for v in missed}
        direction = DOWN if bool(p.joined[client]) else JOIN
        p.joined[client] = True
        self.held[client] = t
        return {"join": post(first, self.exp.wire, p.ledger, t, direction, client)}

    # ------------------------------------------------------------ arrivals

    def arrive(self, reply: Message) -> bool:
        """One reply: the wire and `accept`, or a named rejection; then (concurrency) a new
        start before the server step. Returns whether the buffer is full."""
        p = self.p
        f = self.pending.pop(reply.metadata.reply_to_message_id)
        p.now = self.clock() - self.t0
        p.uploads += 1
        got = self.parse(reply, f)
        if got.data is not None:  # what crossed is counted, used or not
            p.ledger.record(p.round, UP, f.client, len(got.data))
        if got.refused:
            p.rejected.append(got.refused)
        else:
            try:
                arrived = decode(got.data, self.exp.wire)
            except WireError as e:
                p.rejected.append(e.reason.name)
                print(f"fedpress: step {p.round + 1}: client {f.client}'s update rejected: {e}", file=sys.stderr)
            else:
                engine.accept(self.exp, p, f.client, p.round - f.version, arrived, got.loss)
        if self.acfg.arrivals == "concurrency":
            self.start_idle()
        return self.alg.ready(p.server)

    def parse(self, reply: Message, f: Pending) -> ClientReply:
        """The reply as a ClientReply; `refused` names why it is not used (its data, if any,
        still crossed the wire)."""
        if reply.has_error():
            reason = error_reason(reply)
            self.errors[f.client] = self.errors.get(f.client, 0) + 1
            if reason == NO_REPLY:
                self.lose(f.client)
            elif self.errors[f.client] >= MAX_ERRORS:
                self.lose(f.client, f"answered {MAX_ERRORS} starts in a row with an error")
            self.held.pop(f.client, None)  # whatever it holds, it gets x̂ whole next time
            return ClientReply(None, float("nan"), 0, reason)
        self.errors.pop(f.client, None)
        self.flower_bytes["up"] += count_bytes(reply.content)
        got = parse_reply(reply.content)
        config = reply.content.config_records.get("config")
        if not got.refused and (config is None or config.get("version") != f.version):
            # the staleness must come from the version the start was sent
            return replace(got, refused="VERSION_MISMATCH")
        return got

    def lose(self, client: int, why: str = "stopped answering") -> None:
        if client not in self.lost:
            self.lost.add(client)
            print(f"fedpress: client {client} (node {self.node_of[client]}) {why}; it is not started again "
                  f"in this run", file=sys.stderr)

    def expire(self) -> None:
        """Starts older than the timeout are lost: counted NO_REPLY, their node not used again."""
        if not self.timeout:
            return
        now = self.clock()
        for message_id, f in list(self.pending.items()):
            if now - f.sent > self.timeout:
                del self.pending[message_id]
                self.p.rejected.append(NO_REPLY)
                self.lose(f.client)
                if self.acfg.arrivals == "concurrency":
                    self.start_idle()

    # ------------------------------------------------------------ the loop

    def steps(self):
        """Yield each server step's row until `rounds` steps are taken."""
        p, acfg = self.p, self.acfg
        if acfg.arrivals == "concurrency":
            for _ in range(acfg.concurrency):
                self.start_idle()
        step_started, since_step = time.perf_counter(), 0
        limit = 1000 * self.cfg.data.num_clients  # as the virtual clock: replies without a step
        while p.round < self.cfg.rounds:
            if acfg.arrivals == "rate":
                while p.clock_starts / acfg.rate <= self.clock() - self.t0:
                    p.clock_starts += 1
                    self.start_idle()
            if not self.pending and (acfg.arrivals == "concurrency" or self.lost.issuperset(self.node_of)):
                raise RuntimeError(f"flower: no client left to train after {p.round} server steps: "
                                   f"{len(self.lost)} of {len(self.node_of)} nodes stopped answering")
            self.expire()
            replies = list(self.grid.pull_messages(list(self.pending)))
            if not replies:
                time.sleep(POLL)
                continue
            for reply in replies:
                if reply.metadata.reply_to_message_id not in self.pending:
                    continue  # expired already
                since_step += 1
                if since_step > limit:
                    raise RuntimeError(f"flower: no server step after {limit} replies; rejections so far: "
                                       f"{', '.join(sorted(set(p.rejected)))}")
                if self.arrive(reply):
                    since_step = 0
                    row = engine.server_step(self.exp, p, time.perf_counter() - step_started, self.broadcast,
                                             in_flight=len(self.pending))
                    row.update(flower_uplink_bytes=self.flower_bytes["up"],
                               flower_downlink_bytes=self.flower_bytes["down"], lost=len(self.lost))
                    self.flower_bytes = {"up": 0, "down": 0}
                    step_started = time.perf_counter()
                    yield row
                    if p.round >= self.cfg.rounds:
                        return

    def broadcast(self, q: WireMessage) -> None:
        """QAFeL's q after a server step: encoded once, kept for the nodes to catch up on while
        the q's since the oldest kept one cost less than x̂ whole; counted as each node gets it."""
        self.history[self.p.round + 1] = wire.encode(q, self.exp.wire)
        while sum(map(len, self.history.values())) >= self.dense:
            del self.history[min(self.history)]


# --- the server app and the client handler ---


def run_async(grid: Grid, exp: Experiment, out: str | Path | None, *, resume: bool = False,
              timeout: float | None = None, progress: bool = False, wait: float = 600.0,
              clock: Callable[[], float] = time.monotonic) -> dict:
    """The ServerApp's main for an asynchronous config: the run directory as the simulator
    writes it (the `virtual_time` column holds real seconds here; summary "clock": "real")."""
    out_dir, p = engine.prepare(exp, out, resume)
    fleet = GridAsync(grid, exp, p, discover(grid, exp.config.data.num_clients, wait), timeout, clock)
    bar = engine.rounds._progress_bar(exp.config, p.round, progress, unit="step")
    for row in fleet.steps():
        engine.after_step(exp, p, row, out_dir, bar)
    if bar is not None:
        bar.close()
    return engine.conclude(exp, p, out_dir, clock="real")


def train_async(exp: Experiment, msg: Message, context: Context) -> Message:
    """One start at a node: catch x̂ up (QAFeL), train from what the start brought, reply Q_c(Δ)."""
    alg, layout, cfg = exp.algorithm, exp.wire, exp.config
    c = int(context.node_config["partition-id"])
    head = msg.content["config"]
    version, seq, held = int(head["version"]), int(head["seq"]), int(head["from"])

    frames = msg.content[SYNC_KEY] if SYNC_KEY in msg.content else ArrayRecord()
    copy = None
    if "join" in frames:
        copy = decode(frames["join"].data, layout).expand(layout)
    elif held >= 0:  # QAFeL: the node holds x̂ of version `held`; apply the q's since, in order
        found, synced = load_state(context, COPY_KEY)
        if not found or synced["version"] != held:
            raise RuntimeError(f"client {c}: holds x̂ of version {synced['version'] if found else None}, "
                               f"the server sent the broadcasts after version {held}")
        copy = synced["copy"]
        for name in sorted(frames.keys()):  # q000000007, q000000008, ...
            copy = alg.apply_broadcast(copy, decode(frames[name].data, layout), layout)
    if len(frames):
        save_state(context, {"copy": copy, "version": version}, COPY_KEY)
    received = decode(wire_bytes(msg.content[WIRE_KEY]), layout).expand(layout) if WIRE_KEY in msg.content else copy
    if received is None:
        raise RuntimeError(f"client {c}: the start brought no model and the node holds no synced state")

    state = client_state(exp, context)
    # the start's number names its random streams; the lr is the one of the version it starts from
    ctx = ClientContext(seq, c, int(exp.parts[c].numel()), cfg.seed, exp.model, cfg.train.lr_at(version, cfg.rounds))
    plan = alg.client_begin(state, received, ctx)
    job = client_job(exp, plan, seq, c)
    result = local.train(exp.model, plan, job.inputs, job.targets, train_spec(cfg, version), job.rng)
    reply, new_state = finish(exp, state, plan, result, ctx)
    if new_state is not None:
        save_state(context, new_state)
    return Message(reply_content(reply, version=version, seq=seq), reply_to=msg)
