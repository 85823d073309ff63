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
    wire       join (first download, ledger JOIN), dispatch (per start, DOWN), upload (UP),
               server broadcast (one DOWN entry with its number of receivers: every client
               that joined, since each keeps its copy of x̂ in sync)

Every client that joined holds the same synced copy (they apply the same decoded
broadcasts), so the engine keeps that copy once, as `deliver` in rounds.py decodes a
multicast once; a late joiner's download must equal it bit for bit (checked).

All randomness derives from (seed, purpose, start number | server step), so a run
resumed from a checkpoint (written after a server step) ends with identical outputs.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedpress import state as state_io
from fedpress.algorithms import ClientContext, RoundContext, Uplink
from fedpress.config import AsyncConfig, Config
from fedpress.errors import ConfigError
from fedpress.local import evaluate
from fedpress.metrics.ledger import BROADCAST, DOWN, JOIN, UP, Ledger
from fedpress.rng import derive
from fedpress.sim import rounds
from fedpress.sim.clients import NON_FINITE_RESULT, client_job, train_spec
from fedpress.sim.executor import EXECUTORS
from fedpress.sim.rounds import Experiment, kept_per_tensor, tally, write_metrics, write_outputs
from fedpress.sim.transport import dense_frame_bytes, send
from fedpress.wire import Reason, WireError
from fedpress.wire.message import Message

CUMULATIVE = (
    "uplink_bytes",
    "downlink_bytes",
    "downlink_broadcast_bytes",
    "dense_uplink_bytes",
    "dense_downlink_bytes",
    "initial_downlink_bytes",
)


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
    message: Message | None = field(compare=False)  # its upload; None: non-finite, refused at the client
    loss: float = field(compare=False)


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
    clients: dict[int, Any]
    ledger: Ledger
    rows: list[dict]
    density: list[list[float]]
    joined: torch.Tensor  # (N,) bool: clients that hold the synced copy and receive broadcasts
    copy: torch.Tensor | None = None  # the synced state every joined client holds (QAFeL's x̂)
    flights: list[Flight] = field(default_factory=list)  # a heap
    now: float = 0.0  # virtual time
    started: int = 0  # starts so far
    uploads: int = 0  # arrivals so far
    clock_starts: int = 0  # rate arrivals: starts the clock has issued (taken or skipped)
    # the server step in progress (empty whenever a checkpoint is written)
    staleness: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # why each left-out update was (rounds.tally)
    dropped: int = 0
    arrived: list[Uplink] = field(default_factory=list)


def setup(cfg: Config) -> Experiment:
    """`rounds.setup` (which builds the one-logit model of `model.outputs = 1`), for asynchronous configs only."""
    if not cfg.is_async:
        raise ConfigError(f"algorithm.name = {cfg.algorithm.name!r} is not asynchronous; run it with fedpress.sim.run")
    return rounds.setup(cfg)


def fresh(exp: Experiment) -> AsyncProgress:
    ledger = Ledger(dense_frame_bytes(exp.wire))
    joined = torch.zeros(exp.config.data.num_clients, dtype=torch.bool)
    return AsyncProgress(0, exp.algorithm.init_server(exp.x0, exp.model.layout), {}, ledger, [], [], joined)


class Engine:
    """The event loop over one experiment and its progress."""

    def __init__(self, exp: Experiment, p: AsyncProgress, executor):
        self.exp, self.p, self.executor = exp, p, executor
        self.cfg, self.acfg, self.alg = exp.config, exp.config.asynchronous, exp.algorithm
        self.speed = speeds(self.acfg, self.cfg.seed, self.cfg.data.num_clients)
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
            if self.arrive(heapq.heappop(self.p.flights)):
                return self.flush(time.perf_counter() - started)
        raise RuntimeError(
            f"no server step after {limit} arrivals: with async.max_staleness = "
            f"{self.acfg.max_staleness} every update is too stale; raise it or lower the concurrency"
        )

    def start_idle(self) -> None:
        """Start one idle client, drawn uniformly (none idle: the start is skipped)."""
        idle = (~self.busy).nonzero().flatten()
        if idle.numel() == 0:
            return
        pick = int(torch.randint(idle.numel(), (1,), generator=derive(self.cfg.seed, "pick", self.p.started)))
        self.start(int(idle[pick]))

    def start(self, client: int) -> None:
        """Join (first time), download, train for real, schedule the upload's arrival."""
        cfg, p, alg, exp = self.cfg, self.p, self.alg, self.exp
        seq, wire = p.started, exp.wire
        p.started += 1
        lr = cfg.train.lr_at(p.round, cfg.rounds)
        # ClientContext.round is the start's number: each start draws its own streams
        cctx = ClientContext(seq, client, int(exp.parts[client].numel()), cfg.seed, exp.model, lr)
        rctx = RoundContext(p.round, cfg.seed, (client,), exp.model, cfg.data.num_clients)
        if not p.joined[client]:
            p.joined[client] = True
            first = alg.join(p.server, rctx)
            if first is not None:
                copy = send(first, wire, p.ledger, p.round, JOIN, client).expand(wire)
                if p.copy is not None and not torch.equal(copy, p.copy):
                    raise RuntimeError(
                        f"{alg.name}: a joining client's download differs from the state the "
                        f"other clients hold; the join message must carry it exactly"
                    )
                p.copy = copy
        down, p.server = alg.dispatch(p.server, cctx)
        received = p.copy if down is None else send(down, wire, p.ledger, p.round, DOWN, client).expand(wire)
        if received is None:
            raise RuntimeError(f"{alg.name}: dispatch sent nothing, and the client holds no synced state")
        state = p.clients[client] if client in p.clients else alg.init_client(exp.model.layout)
        plan = alg.client_begin(state, received, cctx)
        # the synchronous client's job and settings, with the start's number for the round
        result = self.executor.run(exp.model, [client_job(exp, plan, seq, client)], train_spec(cfg, p.round))[0]
        message = None
        if bool(torch.isfinite(result.x).all()):  # a diverged client sends nothing
            message, state = alg.client_end(state, plan, result, cctx)
            if state is not None:
                p.clients[client] = state
        finish = p.now + duration(self.acfg, cfg.seed, seq, float(self.speed[client]))
        heapq.heappush(p.flights, Flight(finish, seq, client, p.round, p.now, message, result.loss))
        self.busy[client] = True

    def arrive(self, f: Flight) -> bool:
        """One upload arrives: the wire, then `accept`; then (concurrency) a new start before
        the server step (spec §5.6.5). Returns whether the buffer is full."""
        p = self.p
        p.now = f.finish
        p.uploads += 1
        self.busy[f.client] = False
        if f.message is None:
            p.rejected.append(NON_FINITE_RESULT)
        else:
            try:
                arrived = send(f.message, self.exp.wire, p.ledger, p.round, UP, f.client)
            except WireError as e:
                if e.reason is not Reason.NON_FINITE:
                    raise
                p.rejected.append(e.reason.name)  # e.g. an fp16 overflow: refused at the sender
            else:
                accept(self.exp, p, f.client, p.round - f.version, arrived, f.loss)
        if self.acfg.arrivals == "concurrency":
            self.start_idle()
        return self.alg.ready(p.server)

    def flush(self, wall: float) -> dict:
        """The server step, its broadcast sent eagerly to every joined client (one DOWN entry
        with its number of receivers), whose synced copy moves with it."""

        def broadcast(q: Message) -> None:
            arrived = send(q, self.exp.wire, self.p.ledger, self.p.round, DOWN, BROADCAST,
                           receivers=int(self.p.joined.sum()))
            self.p.copy = self.alg.apply_broadcast(self.p.copy, arrived, self.exp.wire)

        return server_step(self.exp, self.p, wall, broadcast, in_flight=len(self.p.flights))


# ---------------------------------------------------------------------------- the server's side
#
# Shared by both clocks: the virtual one above and Flower's real one
# (fedpress.flower.asynchronous), which hand each upload that reached the server to
# `accept` and call `server_step` when the algorithm says its buffer is ready.


def round_ctx(exp: Experiment, p: AsyncProgress) -> RoundContext:
    return RoundContext(p.round, exp.config.seed, (), exp.model, exp.config.data.num_clients)


def accept(exp: Experiment, p: AsyncProgress, client: int, tau: int, arrived: Message, loss: float) -> None:
    """An update that reached the server, decoded, with staleness τ: the max-staleness
    filter (it crossed the wire, so it is counted, but it is dropped), w(τ), the buffer."""
    acfg = exp.config.asynchronous
    if not within_staleness(tau, acfg.max_staleness):
        p.dropped += 1
        return
    w = staleness_weight(tau, acfg.staleness, acfg.a, acfg.b)
    up = Uplink(client, arrived, float(exp.parts[client].numel()), tau, w)
    p.server = exp.algorithm.receive(p.server, up, round_ctx(exp, p))
    p.staleness.append(tau)
    p.losses.append(loss)
    p.arrived.append(up)


def server_step(exp: Experiment, p: AsyncProgress, wall: float, broadcast: Callable[[Message], None],
                in_flight: int) -> dict:
    """The algorithm's flush; its broadcast (QAFeL's q) handed to `broadcast`, which sends
    and counts it as the runtime delivers it; the row of results. Advances p.round."""
    cfg, alg = exp.config, exp.algorithm
    t, wire = p.round, exp.wire
    p.server, q = alg.flush(p.server, round_ctx(exp, p))
    if q is not None:
        broadcast(q)
    kept = kept_per_tensor(p.arrived, wire)
    sizes = torch.tensor([e.numel for e in wire], dtype=torch.float64) * max(len(p.arrived), 1)
    p.density.append((kept / sizes.clamp(min=1)).tolist())
    row: dict[str, Any] = {
        "round": t + 1,
        "test_accuracy": "",
        "test_loss": "",
        "train_loss": sum(p.losses) / len(p.losses) if p.losses else "",
        "clients": len(p.arrived),
        "rejected": len(p.rejected),
        "rejected_reasons": tally(p.rejected),
        "uplink_values": int(kept.sum()),
        "density": float(kept.sum() / sizes.sum()) if p.arrived else "",
        **p.ledger.round_totals(t),
        **p.ledger.initial_totals(t),
        "virtual_time": p.now,
        "uploads": p.uploads,
        "dropped_stale": p.dropped,
        "staleness_mean": sum(p.staleness) / len(p.staleness) if p.staleness else "",
        "staleness_max": max(p.staleness) if p.staleness else "",
        "in_flight": in_flight,
    }
    if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
        x = alg.model(p.server)
        acc, loss = evaluate(exp.model, x, exp.dataset.x_test, exp.dataset.y_test)
        row.update(test_accuracy=acc, test_loss=loss)
        if cfg.asynchronous.eval_train:
            row.update(training_objective(exp, x))
    previous = p.rows[-1] if p.rows else {}
    for key in CUMULATIVE:
        row[f"cum_{key}"] = previous.get(f"cum_{key}", 0) + row[key]
    row["wall_seconds"] = wall
    p.round = t + 1
    p.rows.append(row)
    p.staleness, p.losses, p.rejected, p.dropped, p.arrived = [], [], [], 0, []
    return row


def training_objective(exp: Experiment, x: torch.Tensor) -> dict[str, float]:
    """f(x) = mean training loss + (λ/2)||params||² with λ = train.weight_decay, in float64
    over the whole training set: the objective whose suboptimality f(x) − f* QAFeL plots."""
    P = exp.model.num_params
    x64 = x.double()
    acc, loss = evaluate(exp.model, x64, exp.dataset.x_train.double(), exp.dataset.y_train)
    penalty = 0.5 * exp.config.train.weight_decay * float(x64[:P].square().sum())
    return {"train_accuracy": acc, "train_objective": loss + penalty}


# ---------------------------------------------------------------------------- run


def run(
    cfg: Config,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_round_end: Callable[[dict], None] | None = None,
    executor=None,
) -> dict:
    """Run an asynchronous config to `rounds` server steps (or resume it); write the run
    directory as `fedpress.sim.run` does, plus the virtual-clock columns; return the summary."""
    exp = setup(cfg)
    out_dir, p = prepare(exp, out, resume)
    engine = Engine(exp, p, executor if executor is not None else EXECUTORS[cfg.executor]())
    bar = rounds._progress_bar(cfg, p.round, progress, unit="step")
    while p.round < cfg.rounds:
        row = engine.step()
        if on_round_end is not None:  # before the checkpoint, as in rounds.drive
            on_round_end(row)
        after_step(exp, p, row, out_dir, bar)
    if bar is not None:
        bar.close()
    return conclude(exp, p, out_dir)


def prepare(exp: Experiment, out: str | Path | None, resume: bool) -> tuple[Path, AsyncProgress]:
    """The run directory and where the run stands: a fresh start, or its checkpoint."""
    out_dir, found = rounds.run_dir(exp.config, out, resume)
    return out_dir, _load_checkpoint(found) if found is not None else fresh(exp)


def after_step(exp: Experiment, p: AsyncProgress, row: dict, out_dir: Path, bar=None) -> None:
    """The progress bar, and every `checkpoint_every` steps a checkpoint and metrics.csv."""
    cfg = exp.config
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str(
            f"t {row['virtual_time']:.1f} uploads {row['uploads']} "
            f"sent {(row['cum_uplink_bytes'] + row['cum_downlink_bytes']) / 1e6:,.2f} MB"
        )
    if cfg.checkpoint_every and p.round % cfg.checkpoint_every == 0 and p.round < cfg.rounds:
        _save_checkpoint(p, out_dir / "checkpoint.pt")
        write_metrics(p.rows, out_dir / "metrics.csv")


def conclude(exp: Experiment, p: AsyncProgress, out_dir: Path, clock: str = "virtual") -> dict:
    """The outputs of a finished run and its summary (with the asynchronous figures); the
    checkpoint is removed. `clock`: "virtual" (this engine) or "real" (Flower)."""
    summary = write_outputs(exp, p, out_dir)
    last = p.rows[-1]
    staleness = [r["staleness_mean"] for r in p.rows if r["staleness_mean"] != ""]
    summary.update(
        {
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
    )
    objectives = [r["train_objective"] for r in p.rows if r.get("train_objective", "") != ""]
    if objectives:
        summary["final_train_objective"] = objectives[-1]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return summary


def _save_checkpoint(p: AsyncProgress, path: Path) -> None:
    state_io.save(
        {
            "round": p.round,
            "server": p.server,
            "clients": p.clients,
            "dense_bytes": p.ledger.dense_bytes,
            "ledger": p.ledger.to_rows(),
            "rows": p.rows,
            "density": p.density,
            "joined": p.joined,
            "copy": p.copy,
            "flights": p.flights,
            "now": p.now,
            "started": p.started,
            "uploads": p.uploads,
            "clock_starts": p.clock_starts,
        },
        path,
    )


def _load_checkpoint(path: Path) -> AsyncProgress:
    d = state_io.load(path)
    return AsyncProgress(
        d["round"],
        d["server"],
        d["clients"],
        Ledger.from_rows(d["dense_bytes"], d["ledger"]),
        d["rows"],
        d["density"],
        d["joined"],
        d["copy"],
        d["flights"],
        d["now"],
        d["started"],
        d["uploads"],
        d["clock_starts"],
    )


__all__ = ["AsyncProgress", "Engine", "Flight", "accept", "conclude", "prepare", "run", "server_step", "setup",
           "staleness_weight", "within_staleness"]
