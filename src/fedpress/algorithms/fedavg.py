"""FedAvg and its compressed-uplink baselines (spec §1.2, §1.6, §1.10).

One algorithm, many baselines: the uplink codec decides what a client sends.
FedAvg is `uplink=fp32()`; Top-k with error feedback is
`uplink=error_feedback(chain(top_k(0.01), fp16()))`; QSGD is `uplink=qsgd(s, bucket)`.
The codec's state (an error-feedback residual, EMA thresholds) is the client's state.
Server options: server learning rate eta_s and server momentum beta_s (FedAvgM);
client option: the FedProx proximal term mu.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from fedpress.algorithms.base import MODEL, ClientContext, RoundContext, RoundsAlgorithm, Uplink, weighted_mean
from fedpress.compress import Codec, fp32
from fedpress.layout import Layout
from fedpress.local import LocalPlan, LocalResult, Proximal
from fedpress.wire.message import Dense, Message


@dataclass(frozen=True)
class ServerState:
    x: torch.Tensor  # (d,) global model: parameters then buffers
    momentum: torch.Tensor | None = None  # (d,) FedAvgM buffer m


def dense_broadcast(server, ctx: RoundContext) -> tuple[Message, object]:
    """The global model x as one dense fp32 message (FedSparQ's and FLARE's downlink)."""
    return Message(ctx.layout.numel, Dense(server.x)), server


def server_step(server: ServerState, mean: torch.Tensor, lr: float, momentum: float) -> ServerState:
    """x <- x + eta_s * mean, or with FedAvgM (spec §1.10): m <- beta_s m + mean; x <- x + eta_s m."""
    if server.momentum is None:
        return replace(server, x=server.x + lr * mean)
    m = momentum * server.momentum + mean
    return ServerState(x=server.x + lr * m, momentum=m)


def prox_penalty(anchor: torch.Tensor, mu: float) -> Proximal:
    """FedProx (spec §1.10): (mu/2) ||w - x_t||^2 on the parameters, x_t the received model."""
    return Proximal(anchor, 0.5 * mu)


@dataclass(frozen=True)
class FedAvg(RoundsAlgorithm):
    uplink: Codec = field(default_factory=fp32)
    downlink: Codec = field(default_factory=fp32)  # a stateless codec for the broadcast model
    server_lr: float = 1.0
    server_momentum: float = 0.0
    prox_mu: float = 0.0
    weighting: str = "samples"  # "samples": n_i / n ; "uniform": 1 / |S|
    name: str = "fedavg"
    downlink_content: ClassVar[str] = MODEL  # with downlink = fp32 (setup checks)

    def init_server(self, x0: torch.Tensor, layout: Layout) -> ServerState:
        return ServerState(x0.clone(), torch.zeros_like(x0) if self.server_momentum else None)

    def init_client(self, layout: Layout) -> Any:
        return self.uplink.init(layout)

    def broadcast(self, server: ServerState, ctx: RoundContext) -> tuple[Message, ServerState]:
        msg, _ = self.downlink.encode(server.x, ctx.layout, self.downlink.init(ctx.layout), ctx.rng("downlink"))
        return msg, server

    def client_begin(self, state: Any, received: torch.Tensor, ctx: ClientContext) -> LocalPlan:
        penalty = prox_penalty(received[: ctx.model.num_params], self.prox_mu) if self.prox_mu else None
        return LocalPlan(x0=received, penalty=penalty)

    def client_end(self, state: Any, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, Any]:
        delta = result.x - plan.x0  # (d,) pseudo-gradient, spec §1.1 sign convention
        return self.uplink.encode(delta, ctx.layout, state, ctx.rng("uplink"))

    def aggregate(self, server: ServerState, uplinks: list[Uplink], ctx: RoundContext) -> ServerState:
        if not uplinks:
            return server
        return server_step(server, weighted_mean(uplinks, ctx.layout, self.weighting), self.server_lr,
                           self.server_momentum)

    def model(self, server: ServerState) -> torch.Tensor:
        return server.x
