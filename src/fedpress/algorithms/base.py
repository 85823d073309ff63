"""The algorithm contract: small server and client step functions, split at the network.

An algorithm is a frozen dataclass of hyperparameters whose methods are pure: every
state is taken and returned, never kept on `self` (DESIGN rule 2). The runtime (the
synchronous simulator, the asynchronous engine, Flower) calls them in this order:

    server = alg.init_server(x0, layout)
    each round, for the sampled clients S:
        down, server = alg.broadcast(server, round_ctx)         # Message, or {client: Message}
        ... the runtime sends `down` through the wire ...
        plan  = alg.client_begin(client_state, received, ctx)    # LocalPlan: start point, hooks
        ... an executor runs local training: LocalResult ...
        up, client_state = alg.client_end(client_state, plan, result, ctx)   # Message
        ... the runtime sends `up` through the wire ...
        server = alg.aggregate(server, uplinks, round_ctx)
    evaluate alg.model(server)

Asynchronous algorithms (FedBuff, QAFeL, Naive; `algorithms/fedbuff.py`) replace
`broadcast`/`aggregate` with the steps the asynchronous engine (`sim/asynchronous.py`) calls:

    msg = alg.join(server, round_ctx)                # Message | None: the first download of a
                                                     # client (QAFeL's x̂), counted separately
    down, server = alg.dispatch(server, client_ctx)  # Message | None: what a client starting now
                                                     # downloads; None: it starts from its synced copy
    plan = alg.client_begin(...) ; up, state = alg.client_end(...)       # as above
    server = alg.receive(server, uplink, round_ctx)  # one arrival; uplink.staleness, .staleness_weight
    if alg.ready(server):
        server, q = alg.flush(server, round_ctx)     # server step; q: Message | None, multicast to
                                                     # every client that joined
        copy = alg.apply_broadcast(copy, q, layout)  # what each of those clients does with q
Optional hooks: `prepare_model(module, generator)` re-parameterises the model once before
the run (SparsyFed); `round_metrics(before, after, uplinks, ctx) -> {name: number}` adds
the method's own measurements to the round's metrics row.

An algorithm never imports the simulator: it sees messages, plans and results only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedpress.layout import Layout
from fedpress.local import FlatModel, LocalPlan, LocalResult
from fedpress.rng import derive
from fedpress.wire.message import Message

Downlink = Message | dict[int, Message]


@dataclass(frozen=True)
class RoundContext:
    """What the server knows about the round it is running."""

    round: int  # 0-based server step
    seed: int  # the run seed; randomness shared by server and clients derives from it
    clients: tuple[int, ...]  # sampled this round
    model: FlatModel  # the model as a function and its layout (agreed once, never sent)
    population: int = 0  # number of clients in the federation (EF21's server average)

    @property
    def layout(self) -> Layout:
        return self.model.layout

    def rng(self, purpose: str) -> torch.Generator:
        return derive(self.seed, purpose, self.round)


@dataclass(frozen=True)
class ClientContext:
    """What one client knows while it works on a round."""

    round: int
    client: int
    num_samples: int
    seed: int
    model: FlatModel
    lr: float | None = None  # the local step size gamma this round (Scaffnew's h update needs it)

    @property
    def layout(self) -> Layout:
        return self.model.layout

    def rng(self, purpose: str) -> torch.Generator:
        return derive(self.seed, purpose, self.round, self.client)

    def shared_rng(self, purpose: str) -> torch.Generator:
        """The same stream the server's RoundContext.rng(purpose) gives this round."""
        return derive(self.seed, purpose, self.round)


@dataclass(frozen=True)
class Uplink:
    """One client's update as the server has it: decoded from the bytes that arrived."""

    client: int
    message: Message
    weight: float  # n_i, the client's number of samples
    staleness: int = 0  # server steps since the client started (asynchronous runtimes)
    staleness_weight: float = 1.0  # w(staleness), from the asynchronous engine's [async] staleness rule


class Algorithm(Protocol):
    name: str

    def init_server(self, x0: torch.Tensor, layout: Layout) -> Any: ...

    def init_client(self, layout: Layout) -> Any: ...

    def broadcast(self, server: Any, ctx: RoundContext) -> tuple[Downlink, Any]: ...

    def client_begin(self, state: Any, received: torch.Tensor, ctx: ClientContext) -> LocalPlan: ...

    def client_end(self, state: Any, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, Any]: ...

    def aggregate(self, server: Any, uplinks: list[Uplink], ctx: RoundContext) -> Any: ...

    def model(self, server: Any) -> torch.Tensor: ...


def weighted_mean(uplinks: list[Uplink], layout: Layout, weighting: str = "samples") -> torch.Tensor:
    """sum_i p_i decode(m_i) over the uplinks that arrived: p_i = n_i / sum n (FedAvg's
    "samples" weighting) or 1 / |S| ("uniform", FLARE's and EF21's unweighted mean)."""
    weights = [u.weight if weighting == "samples" else 1.0 for u in uplinks]
    total = sum(weights)
    out = torch.zeros(layout.numel)
    for u, w in zip(uplinks, weights, strict=True):
        out.add_(u.message.expand(layout), alpha=w / total)
    return out
