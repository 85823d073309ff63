"""The asynchronous engine: buffered asynchronous FL on a virtual clock (spec §1.8, §5.6.7).

Training runs for real; only time is simulated. A client that starts at virtual time s
trains at once, and its upload is an event at s + duration in a priority queue. The
engine pops events in time order (ties: the earlier start first) and hands each arrival
to the algorithm; when the algorithm's buffer is full it takes a server step, which is
one row of the results (`rounds` in the config counts server steps).

    starts     [async] arrivals = "concurrency": `concurrency` clients train at any time,
               an arrival starts an idle client (drawn uniformly) at the same instant,
               before the server step it may complete (spec §5.6.5; QAFeL's logistic code);
               arrivals = "rate": one start every 1/rate, skipped while all clients train
               (FLSim's constant training rate); at equal times arrivals come first
    durations  |N(0,1)|, Exp(1) or 1, times `scale`, divided by the client's speed factor
    staleness  τ = server version now − version at start; w(τ) constant, 1/(1+τ)^a or
               hinge; τ > max_staleness: the update crossed the wire but is dropped
    wire       dispatch (per start, DOWN), upload (UP); QAFeL: each server step's q is
               encoded once and kept, and a starting client is caught up from the version
               of x̂ it holds (runtime/downlink.py: the missed q's, the changed coordinates,
               or x̂ whole, whichever is smallest; its first download counted JOIN, or
               nothing with [downlink] init = "seeded"), as Flower delivers them: a client
               that does not start receives nothing

QAFeL's clients rebuild x̂ from the bytes they receive (`Replicas`: one copy per version
some client holds, copies of one version equal bit for bit, checked); they train from the
same x̂ as the server's, so the model is what eager delivery gave.

All randomness derives from (seed, purpose, start number | server step), so a run
resumed from a checkpoint (written after a server step) ends with identical outputs.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, MutableMapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fedpress import wire
from fedpress.algorithms import RoundContext, Uplink
from fedpress.config import AsyncConfig, Config
from fedpress.errors import ConfigError
from fedpress.metrics.ledger import DOWN, Ledger
from fedpress.rng import derive
from fedpress.runtime import downlink, experiment
from fedpress.runtime.accept import accept
from fedpress.runtime.downlink import HiddenState, Replicas
from fedpress.runtime.executor import Executor, make_executor
from fedpress.runtime.experiment import Experiment
from fedpress.runtime.outputs import (
    CUMULATIVE,
    Display,
    RunDirectory,
    close_row,
    due,
    evaluate_into,
    round_row,
    steps_postfix,
)
from fedpress.runtime.rejections import Refusal, tally
from fedpress.runtime.store import refuse_client_state
from fedpress.runtime.transport import Transport, dense_frame_bytes
from fedpress.runtime.turn import ClientReply, Turn, client_context, client_turns
from fedpress.wire.message import Message

ASYNC_CUMULATIVE = (*CUMULATIVE, "initial_downlink_bytes")


# ---------------------------------------------------------------------------- staleness


def staleness_weight(tau: int, rule: str, a: float = 0.5, b: float = 4.0) -> float:
    """w(τ): "constant" 1 (QAFeL's runs, spec §5.4); "polynomial" 1/(1+τ)^a (FedBuff's
    1/sqrt(1+τ) with a = 0.5, spec §1.8); "hinge" 1 for τ <= b, else 1/(1 + a(τ − b))."""
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
    if rule == "constant":
        return 1.0
    if rule == "polynomial":
        return 1.0 / (1.0 + tau) ** a
    if rule == "hinge":
        return 1.0 if tau <= b else 1.0 / (1.0 + a * (tau - b))
    raise ValueError(f"unknown staleness rule {rule!r}; allowed: constant, polynomial, hinge")


def within_staleness(tau: int, max_staleness: int) -> bool:
    """The max-staleness filter: -1 keeps everything."""
    return max_staleness < 0 or tau <= max_staleness


# ---------------------------------------------------------------------------- the clock


@dataclass(frozen=True, order=True)
class Flight:
    """One client training; its upload arrives at `finish`. Ordered by (finish, seq)."""

    finish: float
    seq: int  # the start's number: breaks ties (earlier start first), names its random streams
    client: int = field(compare=False)
    version: int = field(compare=False)  # server steps taken when it started
    start: float = field(compare=False)
    reply: ClientReply = field(compare=False)  # its upload's bytes (encoded when training ended), or why none


def arrival_first(flights: list[Flight], next_start: float) -> bool:
    """Whether the next event is an arrival rather than a clock start: an arrival at the same
    instant as a start comes first, so the starting client sees the step it may complete."""
    return bool(flights) and flights[0].finish <= next_start


def duration(cfg: AsyncConfig, seed: int, seq: int, speed: float) -> float:
    """The virtual training time of start `seq`, for a client with speed factor `speed`."""
    g = derive(seed, "duration", seq)
    if cfg.duration == "half_normal":
        base = float(torch.randn(1, generator=g, dtype=torch.float64).abs())
    elif cfg.duration == "exponential":
        base = float(torch.empty(1, dtype=torch.float64).exponential_(1.0, generator=g))
    else:
        base = 1.0
    return cfg.scale * base / speed


def speeds(cfg: AsyncConfig, seed: int, num_clients: int) -> torch.Tensor:
    """Per-client speed factors exp(sigma z_c), z_c ~ N(0, 1): heterogeneous devices (all 1 if sigma = 0)."""
    z = torch.randn(num_clients, generator=derive(seed, "speed"), dtype=torch.float64)
    return torch.exp(cfg.speed_sigma * z)


# ---------------------------------------------------------------------------- progress


@dataclass
class AsyncProgress:
    """Everything a checkpoint holds. `round` counts server steps (the rows of the results)."""

    round: int
    server: Any
    clients: MutableMapping[int, Any]  # the client store (runtime/store.py)
    ledger: Ledger
    rows: list[dict]
    density: list[list[float]]
    joined: torch.Tensor  # (N,) bool: clients that have started at least once
    hidden: HiddenState | None = None  # QAFeL: x̂'s versions, the q's, what each client holds (runtime/downlink.py)
    replicas: Replicas | None = None  # QAFeL: the clients' copies of x̂, one per version held
    flights: list[Flight] = field(default_factory=list)  # a heap
    now: float = 0.0  # virtual time
    started: int = 0  # starts so far
    uploads: int = 0  # arrivals so far
    clock_starts: int = 0  # rate arrivals: starts the clock has issued (taken or skipped)
    # the server step in progress (empty whenever a checkpoint is written)
    staleness: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    rejected: list[Refusal] = field(default_factory=list)  # why each left-out update was
    dropped: int = 0
    arrived: list[Uplink] = field(default_factory=list)


def require_async(cfg: Config) -> None:
    if not cfg.is_async:
        raise ConfigError(f"algorithm.name = {cfg.algorithm.name!r} is not asynchronous; run it with fedpress.sim.run")


def setup(cfg: Config) -> Experiment:
    """`runtime.experiment.setup` (which builds the one-logit model of `model.outputs = 1`), for
    asynchronous configs only."""
    require_async(cfg)
    return experiment.setup(cfg)


def fresh(exp: Experiment, clients: MutableMapping[int, Any] | None = None) -> AsyncProgress:
    """Step 0: the server's initial state, an empty client store (a dict unless given)."""
    ledger = Ledger(dense_frame_bytes(exp.wire))
    joined = torch.zeros(exp.config.data.num_clients, dtype=torch.bool)
    p = AsyncProgress(0, exp.algorithm.init_server(exp.x0, exp.model.layout), {} if clients is None else clients,
                      ledger, [], [], joined)
    if exp.algorithm.keeps_hidden_state:  # the x̂ clients are caught up from: QAFeL's x̂_0 = x0 (spec §5.2)
        rctx = RoundContext(0, exp.config.seed, (), exp.model, exp.config.data.num_clients)
        x_hat = exp.algorithm.join(p.server, rctx).expand(exp.wire)
        seeded = exp.downlink is not None and exp.downlink.seeded
        if seeded and not torch.equal(x_hat, exp.x0):
            raise ConfigError(f"downlink.init = \"seeded\": a client rebuilds x0 from the seed, but "
                              f"{exp.algorithm.name}'s hidden state does not start at x0")
        p.hidden, p.replicas = downlink.start(x_hat, exp.wire, seeded), Replicas()
    return p


class Engine:
    """The event loop over one experiment and its progress."""

    def __init__(self, exp: Experiment, p: AsyncProgress, executor: Executor):
        self.exp, self.p, self.executor = exp, p, executor
        self.cfg, self.acfg, self.alg = exp.config, exp.config.asynchronous, exp.algorithm
        self.transport = Transport(p.ledger, exp.wire)
        self.speed = speeds(self.acfg, self.cfg.seed, self.cfg.data.num_clients)
        self.pending: list[Turn] = []  # starts since the last batch went to the executor
        self.busy = torch.zeros(self.cfg.data.num_clients, dtype=torch.bool)
        for f in p.flights:
            self.busy[f.client] = True
        if self.acfg.arrivals == "concurrency" and not p.flights and p.started == 0:
            for _ in range(self.acfg.concurrency):  # time 0: fill the concurrency
                self.start_idle()

    # ------------------------------------------------------------ events

    def step(self) -> dict:
        """Process events until the server takes its next step; return that step's row."""
        started, arrivals = time.perf_counter(), 0
        limit = 1000 * self.cfg.data.num_clients  # arrivals without a step: max_staleness drops them all
        while arrivals < limit:
            next_start = self.p.clock_starts / self.acfg.rate if self.acfg.arrivals == "rate" else math.inf
            if not arrival_first(self.p.flights, next_start):
                self.p.now = next_start
                self.p.clock_starts += 1
                self.start_idle()
                continue
            arrivals += 1
            if self.p.flights[0].reply is None:  # it started after the last batch: train the batch now
                self.train_pending()
            if self.arrive(heapq.heappop(self.p.flights)):
                return self.flush(time.perf_counter() - started)
        raise RuntimeError(
            f"no server step after {limit} arrivals: {self.p.dropped} dropped as too stale (async.max_staleness = "
            f"{self.acfg.max_staleness}), rejected: {tally(self.p.rejected) or 'none'}"
        )

    def start_idle(self) -> None:
        """Start one idle client, drawn uniformly (none idle: the start is skipped)."""
        idle = (~self.busy).nonzero().flatten()
        if idle.numel() == 0:
            return
        pick = int(torch.randint(idle.numel(), (1,), generator=derive(self.cfg.seed, "pick", self.p.started)))
        self.start(int(idle[pick]))

    def start(self, client: int) -> None:
        """Catch-up (QAFeL: the client's x̂ brought to this version, counted as it goes
        down), download, the client's turn (trained for real now), and the upload's arrival
        scheduled."""
        cfg, p, alg, exp = self.cfg, self.p, self.alg, self.exp
        seq = p.started
        p.started += 1
        p.joined[client] = True
        synced = self.catch_up(client) if p.hidden is not None else None
        # ClientContext.round is the start's number: each start draws its own streams
        down, p.server = alg.dispatch(p.server, client_context(exp, seq, client, p.round))
        received = synced if down is None else self.transport.send(down, p.round, DOWN, client).expand(exp.wire)
        if received is None:
            raise RuntimeError(f"{alg.name}: dispatch sent nothing, and the client holds no synced state")
        state = p.clients.get(client)  # one lookup (a disk store's is a query); None: never stored
        state = alg.init_client(exp.model.layout) if state is None else state
        # trained with the other starts of this server version, before the first of them arrives
        self.pending.append(Turn(client, state, received, seq, p.round))
        finish = p.now + duration(self.acfg, cfg.seed, seq, float(self.speed[client]))
        heapq.heappush(p.flights, Flight(finish, seq, client, p.round, p.now, None))
        self.busy[client] = True

    def catch_up(self, client: int) -> torch.Tensor:
        """QAFeL: the starting client's copy of x̂, brought lazily from the version it holds
        to this one in the smallest exact form (runtime/downlink.py); clients that do not
        start receive nothing."""
        p, exp = self.p, self.exp
        channel = downlink.Server(p.hidden, exp.wire)
        got = channel.catch_up(client)
        downlink.post({client: got}, self.transport, p.round)
        p.hidden = channel.hs
        seed_model = exp.x0 if p.hidden.seeded else None
        copy = p.replicas.receive(client, got, exp.wire, seed_model, add=self.alg.apply_broadcast)
        p.replicas.prune()
        return copy

    def train_pending(self) -> None:
        """The client turns of the starts since the last batch, as one batch through the
        executor (they all start from this server version); their flights get their uploads.
        Each turn depends only on its own state, download and generator, so the batch gives
        what one-at-a-time training gave."""
        if not self.pending:
            return
        p, turns = self.p, self.pending
        self.pending = []
        replies = {}
        for turn, (reply, state) in zip(turns, client_turns(self.exp, turns, self.executor), strict=True):
            replies[turn.round] = reply  # Turn.round is the start's number
            if state is not None:
                p.clients[turn.client] = state
        # the heap's order is (finish, seq), which the uploads do not change
        p.flights = [replace(f, reply=replies[f.seq]) if f.reply is None else f for f in p.flights]

    def arrive(self, f: Flight) -> bool:
        """One upload arrives: `accept` (the wire, the checks, its staleness), then `take`;
        then (concurrency) a new start before the server step (spec §5.6.5). Returns whether
        the buffer is full."""
        p = self.p
        p.now = f.finish
        p.uploads += 1
        self.busy[f.client] = False
        got = accept(self.transport, p.round, f.client, f.reply, sent_version=f.version, server_version=p.round,
                     step="step")
        if isinstance(got, Uplink):
            take(self.exp, p, got, f.reply.loss)
        else:
            p.rejected.append(got)
        if self.acfg.arrivals == "concurrency":
            self.start_idle()
        return self.alg.ready(p.server)

    def flush(self, wall: float) -> dict:
        """The server step. Its broadcast q (QAFeL) is encoded once and kept: each client
        gets it, or what replaces it, when it next starts (`catch_up`)."""
        self.train_pending()  # the starts before this step: every flight holds its upload at a checkpoint
        return server_step(self.exp, self.p, wall, lambda q: keep_broadcast(self.exp, self.p, q),
                           in_flight=len(self.p.flights))


# ---------------------------------------------------------------------------- the server's side
#
# Shared by both clocks: the virtual one above and Flower's real one
# (fedpress.flower.asynchronous), which hand each upload `accept` let through to `take`
# and call `server_step` when the algorithm says its buffer is ready.


def keep_broadcast(exp: Experiment, p: AsyncProgress, q: Message) -> None:
    """A server step's q: encoded once and applied to the server's record of x̂ (QAFeL's
    x̂ + q), kept for the clients to catch up on. Nothing is counted here: bytes are
    counted as each client receives them."""
    frame = wire.encode(q, exp.wire)
    p.hidden = downlink.advance(p.hidden, frame, wire.decode(frame, exp.wire), exp.wire, exp.algorithm.apply_broadcast)


def round_ctx(exp: Experiment, p: AsyncProgress) -> RoundContext:
    return RoundContext(p.round, exp.config.seed, (), exp.model, exp.config.data.num_clients)


def take(exp: Experiment, p: AsyncProgress, uplink: Uplink, loss: float) -> None:
    """An accepted update with its staleness τ: the max-staleness filter (it crossed the
    wire, so it is counted, but it is dropped), w(τ), the algorithm's buffer."""
    acfg = exp.config.asynchronous
    if not within_staleness(uplink.staleness, acfg.max_staleness):
        p.dropped += 1
        return
    up = replace(uplink, staleness_weight=staleness_weight(uplink.staleness, acfg.staleness, acfg.a, acfg.b))
    p.server = exp.algorithm.receive(p.server, up, round_ctx(exp, p))
    p.staleness.append(up.staleness)
    p.losses.append(loss)
    p.arrived.append(up)


def server_step(exp: Experiment, p: AsyncProgress, wall: float, broadcast: Callable[[Message], None],
                in_flight: int) -> dict:
    """The algorithm's flush; its broadcast (QAFeL's q) handed to `broadcast`, which sends
    and counts it as the runtime delivers it; the row of results. Advances p.round."""
    cfg, alg = exp.config, exp.algorithm
    t = p.round
    p.server, q = alg.flush(p.server, round_ctx(exp, p))
    if q is not None:
        broadcast(q)
    row = round_row(t, p.arrived, p.rejected, p.losses, p.ledger, exp.wire, p.density)
    row.update({
        **p.ledger.initial_totals(t),
        "virtual_time": p.now,
        "uploads": p.uploads,
        "dropped_stale": p.dropped,
        "staleness_mean": sum(p.staleness) / len(p.staleness) if p.staleness else "",
        "staleness_max": max(p.staleness) if p.staleness else "",
        "in_flight": in_flight,
    })
    if due(cfg, t):
        x = alg.model(p.server)
        evaluate_into(row, exp, x)
        if cfg.asynchronous.eval_train:
            row.update(training_objective(exp, x))
    p.round = t + 1
    p.staleness, p.losses, p.rejected, p.dropped, p.arrived = [], [], [], 0, []
    return close_row(row, p.rows, wall, ASYNC_CUMULATIVE)


def training_objective(exp: Experiment, x: torch.Tensor) -> dict[str, float]:
    """f(x) = mean training loss + (λ/2)||params||² with λ = train.weight_decay, in float64
    over the whole training set: the objective whose suboptimality f(x) − f* QAFeL plots."""
    from fedpress.local import evaluate

    P = exp.model.num_params
    x64 = x.double()
    acc, loss = evaluate(exp.model, x64, exp.dataset.x_train.double(), exp.dataset.y_train, device=exp.device)
    penalty = 0.5 * exp.config.train.weight_decay * float(x64[:P].square().sum())
    return {"train_accuracy": acc, "train_objective": loss + penalty}


# ---------------------------------------------------------------------------- run


def run(
    cfg: Config,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_round_end: Callable[[dict], None] | None = None,
    executor: Executor | None = None,
) -> dict:
    """Run an asynchronous config to `rounds` server steps (or resume it); write the run
    directory as `fedpress.sim.run` does, plus the virtual-clock columns; return the summary."""
    require_async(cfg)  # before the directory is touched
    # the directory is checked first, taken only once setup has accepted the config
    run_dir, p = RunDirectory.open(cfg, out, AsyncProgress, resume=resume, overwrite=overwrite, write=False)
    exp = setup(cfg)
    run_dir.commit(cfg, fresh=p is None)
    p = p or fresh(exp, run_dir.client_store(cfg))
    try:
        with make_executor(exp) if executor is None else nullcontext(executor) as executor:  # a given one stays open
            engine = Engine(exp, p, executor)
            display = Display(cfg, p.round, progress, unit="step", postfix=steps_postfix)
            while p.round < cfg.rounds:
                row = engine.step()
                if on_round_end is not None:  # before the checkpoint, as in rounds.drive
                    on_round_end(row)
                display.update(p.rows)
                run_dir.after_row(cfg, p, p.round)
            display.close()
        return conclude(exp, p, run_dir)
    finally:  # a disk store's uncommitted changes dropped, its lock released: a resume can open it
        run_dir.close_store()


def prepare(exp: Experiment, out: str | Path | None, resume: bool, overwrite: bool = False
            ) -> tuple[RunDirectory, AsyncProgress]:
    """The run directory and where the run stands: a fresh start, or its checkpoint. For
    Flower's asynchronous ServerApp, whose clients keep their own states (Context.state)."""
    refuse_client_state(exp.config)
    run_dir, p = RunDirectory.open(exp.config, out, AsyncProgress, resume=resume, overwrite=overwrite)
    return run_dir, p or fresh(exp)


def conclude(exp: Experiment, p: AsyncProgress, run_dir: RunDirectory, clock: str = "virtual") -> dict:
    """The outputs of a finished run and its summary (with the asynchronous figures).
    `clock`: "virtual" (this engine) or "real" (Flower)."""
    last = p.rows[-1]
    staleness = [r["staleness_mean"] for r in p.rows if r["staleness_mean"] != ""]
    extra = {
        "asynchronous": True,
        "clock": clock,
        "server_steps": p.round,
        "virtual_time": p.now,
        "uploads": p.uploads,
        "initial_downlink_bytes": last["cum_initial_downlink_bytes"],
        "dropped_stale": sum(r["dropped_stale"] for r in p.rows),
        "mean_staleness": sum(staleness) / len(staleness) if staleness else math.nan,
        "max_staleness": max((r["staleness_max"] for r in p.rows if r["staleness_max"] != ""), default=0),
    }
    objectives = [r["train_objective"] for r in p.rows if r.get("train_objective", "") != ""]
    if objectives:
        extra["final_train_objective"] = objectives[-1]
    return run_dir.write_outputs(exp, p, **extra)


__all__ = ["AsyncProgress", "Engine", "Flight", "conclude", "prepare", "run", "server_step", "setup",
           "staleness_weight", "take", "within_staleness"]
