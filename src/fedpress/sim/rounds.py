"""The synchronous driver: rounds of sample, broadcast, train, upload, aggregate.

It knows nothing of any algorithm beyond the `RoundsAlgorithm` protocol. `server_round` is
the server's side of one round over a fleet of clients (`sim.clients.InProcessClients` in
this process, `flower.apps.GridClients` on Flower); `drive` runs the rounds with
checkpoints and writes the run directory (`runtime.outputs`). The client's turn, the
acceptance of an upload, the transport and the outputs are the runtime core's.

All randomness is derived from (seed, purpose, round, client), so a run resumed from a
checkpoint draws exactly what the uninterrupted run drew and ends with the same numbers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from fedpress.algorithms import RoundContext, Uplink
from fedpress.config import Config
from fedpress.metrics.ledger import BROADCAST, DOWN, Ledger
from fedpress.rng import derive
from fedpress.runtime import downlink
from fedpress.runtime.accept import accept
from fedpress.runtime.downlink import Catchup, HiddenState, Replicas
from fedpress.runtime.executor import make_executor
from fedpress.runtime.experiment import Experiment, setup
from fedpress.runtime.outputs import (
    CUMULATIVE,
    Display,
    RunDirectory,
    close_row,
    due,
    evaluate_into,
    round_row,
    warn_if_empty,
)
from fedpress.runtime.rejections import Refusal, Rejection
from fedpress.runtime.store import refuse_client_state
from fedpress.runtime.transport import Transport, dense_frame_bytes
from fedpress.runtime.turn import ClientReply
from fedpress.sim.clients import InProcessClients
from fedpress.wire import Reason, WireError


@dataclass
class Progress:
    """Where a synchronous run stands: what a checkpoint holds."""

    round: int  # rounds completed
    server: Any
    clients: MutableMapping[int, Any]  # the client store (runtime/store.py): only clients that have state
    ledger: Ledger
    rows: list[dict]
    density: list[list[float]] = field(default_factory=list)  # per round: kept fraction of each tensor
    hidden: HiddenState | None = None  # [downlink]: the server's x̂, its versions and the clients' (runtime/downlink.py)
    replicas: Replicas | None = None  # [downlink]: the in-process clients' copies of x̂


class Fleet(Protocol):
    """The clients of a round as the server reaches them: bytes out, replies back."""

    def train(self, round_: int, downlinks: dict[int, bytes | Catchup | None]) -> dict[int, ClientReply]: ...

    def reply(self, round_: int, clients: list[int], data: bytes) -> None: ...


PERMUTATION_LIMIT = 65536  # populations up to this draw a permutation, as every fedpress run before issue 21


def sample_clients(cfg: Config, round_: int) -> tuple[int, ...]:
    """Uniform without replacement, from the run seed (the same on resume). Up to
    PERMUTATION_LIMIT clients, the first k of a random permutation (O(N): the draws every
    earlier result was made with); above it, Floyd's algorithm, O(k) whatever the population."""
    n, k, rng = cfg.data.num_clients, cfg.clients_per_round, derive(cfg.seed, "sample", round_)
    if n <= PERMUTATION_LIMIT:
        return tuple(sorted(torch.randperm(n, generator=rng)[:k].tolist()))
    return tuple(sorted(floyd_sample(n, k, rng)))


def floyd_sample(n: int, k: int, rng: torch.Generator) -> set[int]:
    """k distinct integers of [0, n), uniformly (Floyd's algorithm; Bentley & Floyd, CACM 1987):
    for j = n−k .. n−1 draw t uniform in [0, j]; take t, or j if t is taken already."""
    draws = torch.rand(k, generator=rng, dtype=torch.float64).tolist()  # one uniform per step, in one call
    chosen: set[int] = set()
    for u, j in zip(draws, range(n - k, n), strict=True):
        t = min(int(u * (j + 1)), j)
        chosen.add(j if t in chosen else t)
    return chosen



def run_round(exp: Experiment, p: Progress, executor, t: int) -> dict:
    """One synchronous round t (0-based) of the simulator: every client in this process."""
    return server_round(exp, p, InProcessClients(exp, p.clients, executor, p.replicas), t)


def server_round(exp: Experiment, p: Progress, clients: Fleet, t: int) -> dict:
    """One synchronous round t, from the server's side of the wire. Updates p in place;
    returns the metrics row. Every byte that leaves or reaches the server is counted by
    the transport."""
    cfg, alg = exp.config, exp.algorithm
    started = time.perf_counter()
    sampled = sample_clients(cfg, t)
    rctx = RoundContext(t, cfg.seed, sampled, exp.model, cfg.data.num_clients)
    transport = Transport(p.ledger, exp.wire)

    if exp.downlink is None:
        down, server = alg.broadcast(p.server, rctx)
        with _diverged_if_not_finite(t, "the broadcast"):
            downlinks = post_downlinks(down if isinstance(down, dict) else dict.fromkeys(sampled, down), transport, t)
        replies = clients.train(t, {c: downlinks.get(c) for c in sampled})
    else:  # the hidden-state downlink: q_t = C(x_t − x̂) for all, then each client's catch-up
        server = p.server
        with _diverged_if_not_finite(t, "the broadcast"):
            hidden, _ = downlink.encode_step(p.hidden, alg.model(server), exp.downlink.codec, exp.wire,
                                             derive(cfg.seed, "downlink", t))
        channel = downlink.Server(hidden, exp.wire)
        catchups = {c: channel.catch_up(c) for c in sampled}
        downlink.post(catchups, transport, t)
        replies = clients.train(t, catchups)
        lost = (Rejection.NO_REPLY.name, Rejection.CLIENT_ERROR.name)
        # a node that raised or was lost may not hold x̂ now: x̂ whole next time
        p.hidden = downlink.forget(channel.hs, [c for c in sampled if c not in replies or replies[c].refused in lost])

    uplinks: list[Uplink] = []
    rejected: list[Refusal] = []
    losses: list[float] = []
    for c in sampled:  # client-id order, whatever order the replies came in
        got = accept(transport, t, c, replies.get(c))
        if isinstance(got, Uplink):
            uplinks.append(got)
            losses.append(replies[c].loss)
        else:
            rejected.append(got)
    p.server = alg.aggregate(server, uplinks, rctx)
    answer = alg.reply(p.server, rctx) if uplinks else None
    if answer is not None:  # the server answers the clients that uploaded (Scaffnew's x_bar)
        with _diverged_if_not_finite(t, "the server's reply"):
            data = transport.post(answer, t, DOWN, BROADCAST, receivers=len(uplinks))
        clients.reply(t, [u.client for u in uplinks], data)

    row = round_row(t, uplinks, rejected, losses, p.ledger, exp.wire, p.density)
    row.update(alg.round_metrics(server, p.server, uplinks, rctx))
    if due(cfg, t):
        evaluate_into(row, exp, alg.model(p.server))
    cumulative = CUMULATIVE
    if exp.downlink is not None:  # first downloads (x̂ whole, or a seeded client's first catch-up), also alone
        row.update(p.ledger.initial_totals(t))
        cumulative = (*CUMULATIVE, "initial_downlink_bytes")
    p.round = t + 1
    return close_row(row, p.rows, time.perf_counter() - started, cumulative)


class Diverged(RuntimeError):
    """The server's model went non-finite: nothing more can be sent."""

    def __init__(self, round_: int, what: str):
        super().__init__(f"round {round_ + 1}: {what} holds NaN or infinite values; the run diverged")
        self.round = round_


@contextmanager
def _diverged_if_not_finite(round_: int, what: str):
    try:
        yield
    except WireError as e:
        if e.reason is Reason.NON_FINITE:
            raise Diverged(round_, what) from e
        raise


def post_downlinks(down: dict, transport: Transport, t: int) -> dict[int, bytes]:
    """Encode and count the round's downlink {client: Message}. Clients missing from it
    already hold what they need (their state says so). One Message object given to several
    clients is one multicast: encoded and counted once with its number of receivers, and
    every receiver gets the same bytes object."""
    groups: dict[int, list[int]] = {}
    for c, msg in down.items():
        groups.setdefault(id(msg), []).append(c)
    out = {}
    for clients in groups.values():
        msg = down[clients[0]]
        if len(clients) == 1:
            out[clients[0]] = transport.post(msg, t, DOWN, clients[0])
        else:
            out.update(dict.fromkeys(clients, transport.post(msg, t, DOWN, BROADCAST, receivers=len(clients))))
    return out


def run(
    cfg: Config,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_round_end: Callable[[dict], None] | None = None,
) -> dict:
    """Run a config to the end (or resume it, or extend a finished run to more rounds),
    write the run directory, return the summary. The directory is checked before any data
    is loaded: a run already in it is refused unless `overwrite`."""
    # the directory is checked first, taken only once setup has accepted the config
    run_dir, p = RunDirectory.open(cfg, out, Progress, resume=resume, overwrite=overwrite, write=False)
    exp = setup(cfg)
    run_dir.commit(cfg, fresh=p is None)
    p = p or fresh(exp, run_dir.client_store(cfg))
    try:
        with make_executor(exp) as executor:
            clients = InProcessClients(exp, p.clients, executor, p.replicas)
            return drive(exp, p, clients, run_dir, progress=progress, on_round_end=on_round_end)
    finally:  # a disk store's uncommitted changes dropped, its lock released: a resume can open it
        run_dir.close_store()


def fresh(exp: Experiment, clients: MutableMapping[int, Any] | None = None) -> Progress:
    """Round 0: the server's initial state, an empty client store (a dict unless given)."""
    ledger = Ledger(dense_frame_bytes(exp.model.layout))
    p = Progress(0, exp.algorithm.init_server(exp.x0, exp.model.layout), {} if clients is None else clients, ledger,
                 [])
    if exp.downlink is not None:
        p.hidden, p.replicas = downlink.start(exp.x0, exp.wire, exp.downlink.seeded), Replicas()
    return p


def prepare(exp: Experiment, out: str | Path | None, resume: bool, overwrite: bool = False
            ) -> tuple[RunDirectory, Progress]:
    """The run directory and where the run stands: a fresh start, or its checkpoint (--resume).
    For Flower's ServerApp, whose clients keep their own states (Context.state)."""
    refuse_client_state(exp.config)
    run_dir, p = RunDirectory.open(exp.config, out, Progress, resume=resume, overwrite=overwrite)
    return run_dir, p or fresh(exp)


def drive(exp: Experiment, p: Progress, clients: Fleet, run_dir: RunDirectory, *, progress: bool = True,
          on_round_end: Callable[[dict], None] | None = None) -> dict:
    """The rounds from where p stands to the end over a fleet of clients, with checkpoints;
    then the outputs. The simulator and the Flower ServerApp both run this loop."""
    cfg = exp.config
    display = Display(cfg, p.round, progress)
    diverged = None
    for t in range(p.round, cfg.rounds):
        mark = p.ledger.mark()
        try:
            row = server_round(exp, p, clients, t)
        except Diverged as e:  # keep what was measured: the outputs end at the last whole round
            p.ledger.undo(mark)
            diverged = t + 1
            print(f"fedpress: {e}; writing the {t} rounds before it", file=sys.stderr)
            break
        warn_if_empty(row)
        if on_round_end is not None:  # before the checkpoint: what it adds to the row is kept on resume
            on_round_end(row)
        display.update(p.rows)
        run_dir.after_row(cfg, p, t + 1)
    display.close()
    return run_dir.write_outputs(exp, p, diverged_at_round=diverged)


__all__ = ["Experiment", "Progress", "run", "run_round", "sample_clients", "setup"]
