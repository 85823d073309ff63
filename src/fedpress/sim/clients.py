"""The client side of a synchronous round, as bytes in and bytes out.

A runtime hands each sampled client the bytes of its downlink (or None: it holds what it
needs already) and gets back a `ClientReply`: the bytes of its update, or the reason it
sent none. `InProcessClients` is the simulator's fleet: every client in this process,
their states in one store, local training batched through an executor. The Flower
ClientApp (`fedpress.flower`) runs the same steps, `client_context`, `alg.client_begin`,
`local.train`, `finish`, one client per node, with the state in Flower's Context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedpress import wire
from fedpress.algorithms import ClientContext
from fedpress.config import Config
from fedpress.local import LocalPlan, LocalResult, TrainSpec
from fedpress.rng import derive
from fedpress.sim.executor import Job
from fedpress.wire import Reason, WireError

NON_FINITE_RESULT = "NON_FINITE_RESULT"  # the local model went NaN/inf: nothing is sent


@dataclass(frozen=True)
class ClientReply:
    data: bytes | None  # the encoded update; None when the client sent none
    loss: float  # mean local training loss
    num_samples: int  # n_i, the weight of the update in a sample-weighted mean
    refused: str = ""  # why the update is not used (NON_FINITE_RESULT, a WireError reason, ...); "": use it


def train_spec(cfg: Config, round_: int) -> TrainSpec:
    """The local optimiser settings of round t (the lr follows the config's schedule)."""
    t = cfg.train
    return TrainSpec(lr=t.lr_at(round_, cfg.rounds), batch_size=t.batch_size, epochs=t.epochs,
                     steps=t.steps or None, momentum=t.momentum, weight_decay=t.weight_decay)


def client_context(exp, round_: int, client: int) -> ClientContext:
    return ClientContext(round_, client, int(exp.parts[client].numel()), exp.config.seed, exp.model,
                         exp.config.train.lr_at(round_, exp.config.rounds))


def client_job(exp, plan: LocalPlan, round_: int, client: int) -> Job:
    """Local training of one client: its data and its generator derive(seed, "train", t, c)."""
    idx, rng = exp.parts[client], derive(exp.config.seed, "train", round_, client)
    return Job(plan, exp.dataset.x_train[idx], exp.dataset.y_train[idx], rng)


def finish(exp, state: Any, plan: LocalPlan, result: LocalResult, ctx: ClientContext) -> tuple[ClientReply, Any]:
    """client_end and encoding. Returns (reply, new state). The state is None when nothing
    was sent (or the algorithm keeps none), and the caller then keeps the old one: a
    diverged client's update is not averaged in and its state not kept."""
    if not bool(torch.isfinite(result.x).all()):
        return ClientReply(None, result.loss, ctx.num_samples, NON_FINITE_RESULT), None
    msg, new_state = exp.algorithm.client_end(state, plan, result, ctx)
    try:
        data = wire.encode(msg, exp.wire)
    except WireError as e:
        if e.reason is not Reason.NON_FINITE:
            raise
        # e.g. an fp16 overflow: refused at the sender, nothing averaged in
        return ClientReply(None, result.loss, ctx.num_samples, e.reason.name), None
    return ClientReply(data, result.loss, ctx.num_samples), new_state


class InProcessClients:
    """Every client in this process: the simulator's side of the wire."""

    def __init__(self, exp, store: dict[int, Any], executor):
        self.exp, self.store, self.executor = exp, store, executor

    def _decode(self, downlinks: dict[int, bytes | None]) -> dict[int, torch.Tensor | None]:
        decoded: dict[int, torch.Tensor] = {}  # a multicast is one bytes object: decoded once
        out = {}
        for c, data in downlinks.items():
            if data is not None and id(data) not in decoded:
                decoded[id(data)] = wire.decode(data, self.exp.wire).expand(self.exp.wire)
            out[c] = None if data is None else decoded[id(data)]
        return out

    def train(self, round_: int, downlinks: dict[int, bytes | None]) -> dict[int, ClientReply]:
        exp, alg = self.exp, self.exp.algorithm
        received = self._decode(downlinks)
        clients = list(downlinks)
        contexts = {c: client_context(exp, round_, c) for c in clients}
        states = {c: self.store[c] if c in self.store else alg.init_client(exp.model.layout) for c in clients}
        plans = {c: alg.client_begin(states[c], received[c], contexts[c]) for c in clients}
        jobs = [client_job(exp, plans[c], round_, c) for c in clients]
        results = self.executor.run(exp.model, jobs, train_spec(exp.config, round_))
        replies = {}
        for c, result in zip(clients, results, strict=True):
            replies[c], new_state = finish(exp, states[c], plans[c], result, contexts[c])
            if new_state is not None:
                self.store[c] = new_state
        return replies

    def reply(self, round_: int, clients: list[int], data: bytes) -> None:
        """The server's answer to the round's uploaders (Scaffnew's x_bar)."""
        x = wire.decode(data, self.exp.wire).expand(self.exp.wire)
        for c in clients:
            self.store[c] = self.exp.algorithm.client_reply(self.store[c], x, client_context(self.exp, round_, c))
