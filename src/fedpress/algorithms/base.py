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

    msg = alg.join(server, round_ctx)                # Message | None: the hidden state x̂ the runtime
                                                     # keeps and catches clients up from (QAFeL's x̂_0)
    down, server = alg.dispatch(server, client_ctx)  # Message | None: what a client starting now
                                                     # downloads; None: it starts from its synced copy
    plan = alg.client_begin(...) ; up, state = alg.client_end(...)       # as above
    server = alg.receive(server, uplink, round_ctx)  # one arrival; uplink.staleness, .staleness_weight
    if alg.ready(server):
        server, q = alg.flush(server, round_ctx)     # server step; q: Message | None, kept by the
                                                     # runtime; a client gets it when it next starts
        copy = alg.apply_broadcast(copy, q, layout)  # what a client does with q (runtime/downlink.py)
The two protocols, `RoundsAlgorithm` and `BufferedAlgorithm`, declare these steps; an algorithm subclasses
the one it follows, which is how the registry and every runtime know which engine it needs
(`runtime`), and which gives it the defaults of the optional hooks: `prepare_model`,
`wire_layout`, `round_metrics` for all, `reply`/`client_reply` for rounds, `apply_broadcast`
for buffered ones. No runtime probes an algorithm with hasattr.

An algorithm never imports the simulator: it sees messages, plans and results only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from fedpress.layout import Layout
from fedpress.local import FlatModel, LocalPlan, LocalResult
from fedpress.rng import derive, derive_seed
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

    def seed_of(self, purpose: str) -> int:
        """The seed of `rng(purpose)`, for a plan that makes its generator where it trains."""
        return derive_seed(self.seed, purpose, self.round, self.client)

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
    """What every algorithm is: hyperparameters and the steps every runtime calls.

    An algorithm declares which protocol it follows by subclassing it (`class FedAvg(RoundsAlgorithm)`),
    which also gives it the optional hooks' defaults below: a runtime calls every hook
    unconditionally and never asks an algorithm what it has (DESIGN rule 4).
    """

    name: str
    runtime: ClassVar[str]  # "rounds" (synchronous) or "buffered" (asynchronous): the engine it needs
    plain_sgd: ClassVar[bool] = False  # local steps must be x <- x - lr g (control variates): momentum refused

    def init_server(self, x0: torch.Tensor, layout: Layout) -> Any: ...

    def init_client(self, layout: Layout) -> Any: ...

    def client_begin(self, state: Any, received: torch.Tensor | None, ctx: ClientContext) -> LocalPlan: ...

    def client_end(self, state: Any, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, Any]: ...

    def model(self, server: Any) -> torch.Tensor: ...

    # ---------------------------------------------------------------- optional hooks, with defaults

    def prepare_model(self, module: nn.Module, generator: torch.Generator) -> nn.Module:
        """Re-parameterise the model once before the run (SparsyFed's Powerprop layers)."""
        return module

    def wire_layout(self, model: FlatModel) -> Layout:
        """The layout of every message: the model state, unless the algorithm sends more
        (Scaffold's model and control variate)."""
        return model.layout

    def round_metrics(self, before: Any, after: Any, uplinks: list[Uplink], ctx: RoundContext) -> dict[str, float]:
        """The method's own measurements for the round's metrics row (extra columns)."""
        return {}


class RoundsAlgorithm(Algorithm, Protocol):
    """A synchronous algorithm: rounds of broadcast, local training, aggregate."""

    runtime: ClassVar[str] = "rounds"
    # What `broadcast` sends. MODEL: `model(server)` as one dense fp32 message to every
    # sampled client, which a [downlink] table may replace by a hidden-state compressed
    # downlink (runtime/downlink.py). Anything else says what the downlink is, for the
    # ConfigError that refuses [downlink] (Scaffnew's x̄ reply, Scaffold's [x, c]).
    downlink_content: ClassVar[str] = "a broadcast of its own"

    def broadcast(self, server: Any, ctx: RoundContext) -> tuple[Downlink, Any]: ...

    def aggregate(self, server: Any, uplinks: list[Uplink], ctx: RoundContext) -> Any: ...

    def reply(self, server: Any, ctx: RoundContext) -> Message | None:
        """A second message in the round, server to the clients that uploaded (Scaffnew's
        x_bar); None: the round ends at aggregate."""
        return None

    def client_reply(self, state: Any, received: torch.Tensor, ctx: ClientContext) -> Any:
        """What a client that uploaded does with `reply` (Scaffnew: x_i = x_bar, h_i moves)."""
        return state


class BufferedAlgorithm(Algorithm, Protocol):
    """A buffered asynchronous algorithm (FedBuff, QAFeL, Naive): see the module docstring."""

    runtime: ClassVar[str] = "buffered"

    def join(self, server: Any, ctx: RoundContext) -> Message | None: ...

    def dispatch(self, server: Any, ctx: ClientContext) -> tuple[Message | None, Any]: ...

    def receive(self, server: Any, uplink: Uplink, ctx: RoundContext) -> Any: ...

    def ready(self, server: Any) -> bool: ...

    def flush(self, server: Any, ctx: RoundContext) -> tuple[Any, Message | None]: ...

    @property
    def keeps_hidden_state(self) -> bool:
        """Whether clients train from a hidden state x̂ that the broadcasts move (QAFeL); the
        runtime then keeps x̂'s versions and catches each client up when it starts
        (runtime/downlink.py), with `join` as x̂_0 and `apply_broadcast` as x̂ + q."""
        return False

    def apply_broadcast(self, copy: torch.Tensor | None, q: Message, layout: Layout) -> torch.Tensor:
        """What a client that keeps the synced state does with a broadcast q (QAFeL: x̂ + q)."""
        raise NotImplementedError(f"{self.name} broadcasts nothing after a server step")


RUNTIMES = ("rounds", "buffered")
MODEL = "the model"  # RoundsAlgorithm.downlink_content of a broadcast that is the model itself


def weighted_mean(uplinks: list[Uplink], layout: Layout, weighting: str = "samples") -> torch.Tensor:
    """sum_i p_i decode(m_i) over the uplinks that arrived: p_i = n_i / sum n (FedAvg's
    "samples" weighting) or 1 / |S| ("uniform", FLARE's and EF21's unweighted mean)."""
    weights = [u.weight if weighting == "samples" else 1.0 for u in uplinks]
    total = sum(weights)
    out = torch.zeros(layout.numel)
    for u, w in zip(uplinks, weights, strict=True):
        out.add_(u.message.expand(layout), alpha=w / total)
    return out
