"""FedBuff, QAFeL and Naive on Flower's Grid: buffered asynchronous FL in real time.

Flower has no buffered asynchronous aggregation; this is it, built on the Grid's two
non-blocking calls. The server pushes a `train.fedpress_async` message to keep
`async.concurrency` nodes busy (or starts one every 1/`async.rate` seconds), pulls replies
as they come, hands each to the same server code as the virtual-clock engine
(`sim.asynchronous.accept`), and takes a server step (`server_step`) whenever the
algorithm's buffer of K updates is full. The clock is real time since the run began.

    server -> node   config {version, seq}; "fedpress": the start's download (x, Q_s(x));
                     QAFeL: the node's catch-up of x̂ (config sync-form, sync-base,
                     sync-version; "fedpress-sync": its frames in order)
    node -> server   config {version, seq}; "fedpress": Q_c(Δ); "metrics": loss, num-examples

Staleness is τ = the server's version now − the version carried in the reply (checked
against the one the server sent). The node's synced copy of x̂ and its version live in
Context.state, like every other client state.

QAFeL's broadcast, delivered lazily, as in the virtual clock (runtime/downlink.py): each
q is encoded once at its server step and kept; a node is brought from the version of x̂ it
holds to the current one with its next start, in the smallest exact form (the q's it
missed in order, the coordinates of x̂ that changed since with their values, or x̂
whole), so an idle node costs nothing. Its x̂ is the server's bit for bit when it trains.
The ledger counts what crossed: each frame once per node that received it, a node's
first download as JOIN (none with [downlink] init = "seeded": it rebuilds x0). A node
that answers with an error is sent x̂ whole (or caught up from x0) next time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedpress.algorithms import Uplink
from fedpress.flower.messages import TRAIN_ASYNC, catchup_content, count_bytes, discover, error_reason, parse_reply
from fedpress.flower.records import WIRE_KEY, wire_record
from fedpress.metrics.ledger import DOWN
from fedpress.rng import derive
from fedpress.runtime import downlink
from fedpress.runtime.accept import accept
from fedpress.runtime.experiment import Experiment
from fedpress.runtime.outputs import Display, steps_postfix
from fedpress.runtime.rejections import Rejection, tally
from fedpress.runtime.transport import Transport
from fedpress.runtime.turn import ClientReply, client_context
from fedpress.sim import asynchronous as engine
from fedpress.wire.message import Message as WireMessage

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
        self.transport = Transport(p.ledger, exp.wire)
        self.flower_bytes = {"up": 0, "down": 0}
        self.t0 = clock() - p.now  # a resumed run's clock goes on from its checkpoint
        if p.hidden is not None and p.started:  # resumed: what the nodes kept is not known (maybe new nodes)
            p.hidden = downlink.forget(p.hidden)

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
        p, alg = self.p, self.alg
        seq, t = p.started, p.round
        p.started += 1
        cctx = client_context(self.exp, seq, client, t)
        # what start() counts and marks is undone if Flower cannot take the message
        mark, joined = self.transport.mark(), bool(p.joined[client])
        content = RecordDict({"config": ConfigRecord({"version": t, "seq": seq})})
        p.joined[client] = True
        channel = None
        if p.hidden is not None:  # QAFeL: the node's x̂ caught up from the version it holds
            channel = downlink.Server(p.hidden, self.exp.wire)
            got = channel.catch_up(client)
            downlink.post({client: got}, self.transport, t)
            catchup_content(content, got)
        down, p.server = alg.dispatch(p.server, cctx)
        if down is not None:
            content[WIRE_KEY] = wire_record(self.transport.post(down, t, DOWN, client))
        self.flower_bytes["down"] += count_bytes(content)
        message = Message(content, dst_node_id=self.node_of[client], message_type=TRAIN_ASYNC, group_id=str(seq))
        ids = list(self.grid.push_messages([message]))
        if len(ids) != 1 or not ids[0]:  # Flower could not take it: nothing crossed, and the node is given up
            self.transport.undo(mark)
            p.joined[client] = joined
            self.lose(client, "could not be sent a message (Flower refused it)")
            return
        if channel is not None:  # it crossed: the server now counts the node as caught up
            p.hidden = channel.hs
        self.pending[ids[0]] = Pending(client, t, seq, self.clock())

    # ------------------------------------------------------------ arrivals

    def arrive(self, reply: Message) -> bool:
        """One reply: `accept` (the wire, the checks, its version and staleness), then `take`,
        or a named rejection; then (concurrency) a new start before the server step. Returns
        whether the buffer is full."""
        p = self.p
        f = self.pending.pop(reply.metadata.reply_to_message_id)
        p.now = self.clock() - self.t0
        p.uploads += 1
        got = self.parse(reply, f)
        accepted = accept(self.transport, p.round, f.client, got, sent_version=f.version, server_version=p.round,
                          step="step")
        if isinstance(accepted, Uplink):
            engine.take(self.exp, p, accepted, got.loss)
        else:
            p.rejected.append(accepted)
        if self.acfg.arrivals == "concurrency":
            self.start_idle()
        return self.alg.ready(p.server)

    def parse(self, reply: Message, f: Pending) -> ClientReply:
        """The reply as a ClientReply; an error reply names its reason, and a node that keeps
        failing is given up."""
        if reply.has_error():
            reason = error_reason(reply)
            self.errors[f.client] = self.errors.get(f.client, 0) + 1
            if reason == Rejection.NO_REPLY.name:
                self.lose(f.client)
            elif self.errors[f.client] >= MAX_ERRORS:
                self.lose(f.client, f"answered {MAX_ERRORS} starts in a row with an error")
            if self.p.hidden is not None:  # whatever its node holds, it gets x̂ whole (or from x0) next time
                self.p.hidden = downlink.forget(self.p.hidden, [f.client])
            return ClientReply(None, float("nan"), 0, reason)
        self.errors.pop(f.client, None)
        self.flower_bytes["up"] += count_bytes(reply.content)
        return parse_reply(reply.content)

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
                self.p.rejected.append(Rejection.NO_REPLY)
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
                    raise RuntimeError(f"flower: no server step after {limit} replies: {p.dropped} dropped as too "
                                       f"stale, rejected: {tally(p.rejected) or 'none'}")
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
        """QAFeL's q after a server step: encoded once and kept; each node gets it, or what
        replaces it, with its next start (counted then)."""
        engine.keep_broadcast(self.exp, self.p, q)


# --- the ServerApp's main for an asynchronous config ---


def run_async(grid: Grid, exp: Experiment, out: str | Path | None, *, resume: bool = False, overwrite: bool = False,
              timeout: float | None = None, progress: bool = False, wait: float = 600.0,
              clock: Callable[[], float] = time.monotonic) -> dict:
    """The run directory as the simulator writes it (the `virtual_time` column holds real
    seconds here; summary "clock": "real")."""
    run_dir, p = engine.prepare(exp, out, resume, overwrite)
    fleet = GridAsync(grid, exp, p, discover(grid, exp.config.data.num_clients, wait), timeout, clock)
    display = Display(exp.config, p.round, progress, unit="step", postfix=steps_postfix)
    for _ in fleet.steps():
        display.update(p.rows)
        run_dir.after_row(exp.config, p, p.round)
    display.close()
    return engine.conclude(exp, p, run_dir, clock="real")
