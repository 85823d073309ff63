"""The client's turn, written once for every runtime: begin -> executor -> end -> encode.

The simulator's fleet (a round's clients at once), the virtual clock (one start), the
Flower ClientApp's `train` handler (its node's client) and its asynchronous handler all
call `client_turns`. What comes back is what crosses the network: a `ClientReply`, the
bytes of the update or the reason there are none, with the client's new state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedpress import wire
from fedpress.algorithms import ClientContext
from fedpress.local import LocalPlan, LocalResult, TrainSpec
from fedpress.rng import derive
from fedpress.runtime.executor import Executor, Job
from fedpress.runtime.rejections import Rejection
from fedpress.wire import Reason, WireError

# what the encoder refuses because of the values (not a bug): NaN or inf, fp16 overflow, and a
# QSGD norm or affine scale so large that a value it stands for would expand past fp32's range
REFUSED_AT_THE_SENDER = (Reason.NON_FINITE, Reason.BAD_PARAMETER)


@dataclass(frozen=True)
class ClientReply:
    """What a client sends back, as it crosses the network."""

    data: bytes | None  # the encoded update; None when the client sent none
    loss: float  # mean local training loss
    num_samples: int  # n_i, the weight of the update in a sample-weighted mean
    refused: str = ""  # why there is no update (a Rejection or wire Reason name); "": use it
    version: int | None = None  # the server version it trained from (asynchronous runtimes)


@dataclass(frozen=True)
class Turn:
    """One client's turn: who, the state it holds, what it received."""

    client: int
    state: Any  # its algorithm state (the algorithm's init_client when it has none yet)
    received: torch.Tensor | None  # the decoded downlink; None: it holds what it needs
    round: int  # names its random streams: the round (the virtual clock: the start's number)
    version: int | None = None  # the server step it trains from (lr schedule); None: `round`


def train_spec(exp, round_: int) -> TrainSpec:
    """The local optimiser settings of round t (the lr follows the config's schedule)."""
    cfg, t = exp.config, exp.config.train
    return TrainSpec(lr=t.lr_at(round_, cfg.rounds), batch_size=t.batch_size, epochs=t.epochs,
                     steps=t.steps or None, momentum=t.momentum, weight_decay=t.weight_decay, device=exp.device)


def client_context(exp, round_: int, client: int, version: int | None = None) -> ClientContext:
    """What client c knows in round t; `version` (asynchronous: the server step it starts
    from) sets the lr when `round_` is a start's number."""
    lr_round = round_ if version is None else version
    return ClientContext(round_, client, int(exp.parts[client].numel()), exp.config.seed, exp.model,
                         exp.config.train.lr_at(lr_round, exp.config.rounds))


def client_job(exp, plan: LocalPlan, round_: int, client: int) -> Job:
    """Local training of one client: its data and its generator derive(seed, "train", t, c)."""
    idx, rng = exp.parts[client], derive(exp.config.seed, "train", round_, client)
    return Job(plan, exp.dataset.x_train[idx], exp.dataset.y_train[idx], rng, idx)


def finish(exp, state: Any, plan: LocalPlan, result: LocalResult, ctx: ClientContext,
           version: int | None = None) -> tuple[ClientReply, Any]:
    """client_end and encoding. Returns (reply, new state). The state is None when nothing
    was sent (or the algorithm keeps none), and the caller then keeps the old one: a
    diverged client's update is not averaged in and its state not kept."""
    if not bool(torch.isfinite(result.x).all()):
        return ClientReply(None, result.loss, ctx.num_samples, Rejection.NON_FINITE_RESULT.name, version), None
    msg, new_state = exp.algorithm.client_end(state, plan, result, ctx)
    try:
        data = wire.encode(msg, exp.wire)
    except WireError as e:
        if e.reason not in REFUSED_AT_THE_SENDER:
            raise
        # an fp16 overflow, a norm past what fp32 can expand: refused at the sender, nothing averaged in
        return ClientReply(None, result.loss, ctx.num_samples, e.reason.name, version), None
    return ClientReply(data, result.loss, ctx.num_samples, "", version), new_state


def client_turns(exp, turns: list[Turn], executor: Executor) -> list[tuple[ClientReply, Any]]:
    """The turns of clients that train from the same server version: each client's plan
    (client_begin), their local training as one batch through the executor, then each
    one's client_end and encoding. Returns (reply, new state or None) per turn, in order."""
    if not turns:
        return []
    versions = {t.round if t.version is None else t.version for t in turns}
    if len(versions) != 1:
        raise ValueError(f"client_turns: one batch trains from one server version, got {sorted(versions)}")
    alg = exp.algorithm
    contexts = [client_context(exp, t.round, t.client, t.version) for t in turns]
    plans = [alg.client_begin(t.state, t.received, ctx) for t, ctx in zip(turns, contexts, strict=True)]
    jobs = [client_job(exp, plan, t.round, t.client) for t, plan in zip(turns, plans, strict=True)]
    results = executor.run(exp.model, jobs, train_spec(exp, versions.pop()))
    return [finish(exp, t.state, plan, result, ctx, t.version)
            for t, plan, result, ctx in zip(turns, plans, results, contexts, strict=True)]
