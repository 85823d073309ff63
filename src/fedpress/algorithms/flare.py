"""FLARE: top-k with accumulated error and a regulariser against staleness (arXiv 2312.13795),
with the baselines its code runs beside it: EC + FedProx-style penalty, and EF21.
(EC itself, FLARE with tau0 = 0, is FedAvg with `error_feedback(top_k(per tensor))` and
an unweighted mean; the registry builds it that way, and a test checks the two agree.)

Spec §6.2, round r, client i:
  1. y <- w                                                      (received, dense fp32)
  2. for the first p local steps:
       loss = CE(y) + tau_r * sum_l sum_k M_lk |y_lk - (w_lk + e_ilk)|,   tau_r = tau0 / c^(r+1)
       M_l = 1[ |e_il| > percentile_t(|e_il|) ]  per tensor (t = 50: above the median)
     then plain CE for the remaining steps
  3. delta_i = y - w ;  4. u_i = delta_i + e_i
  5. s_i = TopK_per_tensor(u_i, R% kept) ;  6. e_i <- u_i - s_i ;  7. upload s_i
Server: w <- w + mean_i s_i (unweighted, tff.federated_mean).
Steps 4-6 are `error_feedback(top_k(R/100, scope="tensor"))`; its residual is the accumulator e_i.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from fedpress.algorithms.base import MODEL, ClientContext, RoundContext, RoundsAlgorithm, Uplink, weighted_mean
from fedpress.algorithms.fedavg import ServerState, dense_broadcast
from fedpress.compress import Codec, error_feedback, top_k
from fedpress.compress.compose import ErrorFeedbackState
from fedpress.layout import Layout
from fedpress.local import LocalPlan, LocalResult, MaskedDistance, Proximal
from fedpress.wire.message import Message


def tau_at(tau0: float, c: float, round_: int) -> float:
    """tau_r = tau0 / c^(r+1): the regulariser's weight in (0-based) round r."""
    return tau0 / c ** (round_ + 1)


def percentile_mask(e: torch.Tensor, layout: Layout, t: float) -> torch.Tensor:
    """M = 1[|e_l| > percentile_t(|e_l|)] per tensor, shape (d,) bool.

    The percentile is the 'nearest' one of tfp.stats.percentile (what the reference code
    calls): the sorted value at index round(t/100 * (n - 1)).
    """
    a = e.abs()
    mask = torch.zeros(e.numel(), dtype=torch.bool)
    for entry in layout:
        if entry.numel == 0:
            continue
        v = a[entry.offset : entry.stop]
        rank = round(t / 100 * (entry.numel - 1))
        mask[entry.offset : entry.stop] = v > torch.kthvalue(v, rank + 1).values
    return mask


def flare_uplink(keep_percent: float, compat: bool) -> Codec:
    return error_feedback(top_k(keep_percent / 100, scope="tensor", compat="flare" if compat else None))


@dataclass(frozen=True)
class FLARE(RoundsAlgorithm):
    keep_percent: float = 0.001  # R: percent of each tensor's entries kept (0.001 = 1e-5 of them)
    tau0: float = 0.05
    c: float = 1.1  # tau decays as tau0 / c^(r+1)
    p: int = 1  # regularised local steps at the start of each round
    t: float = 50.0  # mask percentile of |e|
    penalty: str = "l1"  # l1 (reference code) | l2
    regularizer: str = "flare"  # flare: toward w + e on masked coords; prox: (y - w)^2 on all coords, all steps
    compat: bool = False  # reference code: "k+1 per tensor" selection, momentum reset at step p
    server_lr: float = 1.0
    name: str = "flare"
    uplink: Codec = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "uplink", flare_uplink(self.keep_percent, self.compat))

    def init_server(self, x0: torch.Tensor, layout: Layout) -> ServerState:
        return ServerState(x0.clone())

    def init_client(self, layout: Layout) -> ErrorFeedbackState:
        return self.uplink.init(layout)

    broadcast = staticmethod(dense_broadcast)
    downlink_content: ClassVar[str] = MODEL

    def client_begin(self, state: ErrorFeedbackState, received: torch.Tensor, ctx: ClientContext) -> LocalPlan:
        tau = tau_at(self.tau0, self.c, ctx.round)
        reset = self.p if self.compat else None
        if tau == 0:
            return LocalPlan(x0=received, momentum_reset_step=reset)
        P = ctx.model.num_params
        w = received[:P]  # (P,)
        if self.regularizer == "prox":  # EC + FedProx-style penalty tau_r ||y - w||^2 on every step
            return LocalPlan(x0=received, penalty=Proximal(w, tau))
        e = state.residual[:P]  # (P,) the accumulator e_i
        mask = percentile_mask(e, ctx.model.param_layout, self.t)  # (P,) bool
        target = (w + e)[mask]  # where the unsent accumulated update would have taken the model
        regulariser = MaskedDistance(mask, target, tau, power=2 if self.penalty == "l2" else 1)
        return LocalPlan(x0=received, penalty=regulariser, penalty_steps=self.p, momentum_reset_step=reset)

    def client_end(self, state: ErrorFeedbackState, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, ErrorFeedbackState]:
        delta = result.x - plan.x0  # (d,)
        return self.uplink.encode(delta, ctx.layout, state, ctx.rng("uplink"))

    def aggregate(self, server: ServerState, uplinks: list[Uplink], ctx: RoundContext) -> ServerState:
        if not uplinks:
            return server
        return ServerState(server.x + self.server_lr * weighted_mean(uplinks, ctx.layout, "uniform"))

    def model(self, server: ServerState) -> torch.Tensor:
        return server.x


@dataclass(frozen=True)
class EF21Server:
    x: torch.Tensor  # (d,) global model
    g: torch.Tensor  # (d,) the server's estimate: mean over all clients of their g_i


@dataclass(frozen=True)
class EF21Client:
    g: torch.Tensor  # (d,) this client's running estimate g_i


@dataclass(frozen=True)
class EF21(RoundsAlgorithm):
    """EF21 (Richtarik, Sokolov, Fatkhullin 2021; spec §1.6), FLARE's third baseline.

    client: c_i = C(delta_i - g_i); g_i <- g_i + c_i; send c_i
    server: g <- g + (1/N) sum_{i in S} c_i;  x <- x + eta_s g
    N is the population, so g stays the mean of all clients' g_i when only some work; with
    full participation this is the reference code's mean of the clients' new estimates.
    """

    keep_percent: float = 0.001
    compat: bool = False
    server_lr: float = 1.0
    name: str = "ef21"
    compressor: Codec = field(init=False, repr=False)

    def __post_init__(self):
        ratio = self.keep_percent / 100
        object.__setattr__(self, "compressor", top_k(ratio, scope="tensor", compat="flare" if self.compat else None))

    def init_server(self, x0: torch.Tensor, layout: Layout) -> EF21Server:
        return EF21Server(x0.clone(), torch.zeros_like(x0))

    def init_client(self, layout: Layout) -> EF21Client:
        return EF21Client(torch.zeros(layout.numel))

    broadcast = staticmethod(dense_broadcast)
    downlink_content: ClassVar[str] = MODEL

    def client_begin(self, state: EF21Client, received: torch.Tensor, ctx: ClientContext) -> LocalPlan:
        return LocalPlan(x0=received)

    def client_end(self, state: EF21Client, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, EF21Client]:
        delta = result.x - plan.x0  # (d,)
        msg, _ = self.compressor.encode(delta - state.g, ctx.layout, None, None)  # c_i = C(delta_i - g_i)
        return msg, EF21Client(state.g + msg.expand(ctx.layout))

    def aggregate(self, server: EF21Server, uplinks: list[Uplink], ctx: RoundContext) -> EF21Server:
        g = server.g.clone()
        for u in uplinks:
            g.add_(u.message.expand(ctx.layout), alpha=1.0 / max(ctx.population, len(uplinks)))
        return EF21Server(server.x + self.server_lr * g, g)

    def model(self, server: EF21Server) -> torch.Tensor:
        return server.x
