"""FedSparQ: adaptive per-layer EMA thresholds, fp16 values, error feedback (arXiv 2511.05591).

Spec §2.2, round t, client i in S_t:
  1. receive x_t (dense fp32)
  2. local training on F_i(w) + (mu/2)||w - x_t||^2 (FedProx);      delta_i = w_E - x_t
  3. u_i = delta_i + e_i                                             (error feedback)
  4. per tensor l: m_l = statistic(u_l); tau_l <- beta tau_l + (1 - beta) m_l;
     keep M_l = {j : |u_lj| >= factor * tau_l};  values fp16(u_l[M_l])
  5. e_i <- u_i - decode(message)                                    (fp16 error fed back too)
Server: weighted average of the decoded updates, server momentum (FedAvgM).

The paper's body was not available (spec §2.6): every choice it leaves open is an option
here, with the spec's [CHOICE] as default, and the ablations are switches:
  error_feedback=False                  no residual (e_i stays 0)
  selection="static" (tau)              a fixed threshold instead of the EMA
  selection="random"                    as many coordinates per tensor as the EMA would
                                        keep, drawn uniformly (same density, random positions)
  values="fp32"                         kept values in fp32 instead of fp16
  prox_mu=0, server_momentum=0          no FedProx, no server momentum
  residual="quantization_only"          third-party reading: e_i keeps only the fp16 error
                                        of the kept coordinates and drops the rest
  ema_init="zero", statistic_of="update", strict=True: the same re-implementation's choices
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedpress.algorithms.base import MODEL, ClientContext, RoundContext, RoundsAlgorithm, Uplink, weighted_mean
from fedpress.algorithms.fedavg import ServerState, dense_broadcast, prox_penalty, server_step
from fedpress.compress.select import (
    EMAThresholdState,
    ema_update,
    tensor_statistics,
    threshold_indices,
)
from fedpress.layout import Layout
from fedpress.local import LocalPlan, LocalResult
from fedpress.wire.message import Dense, Message

_VALUE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class FedSparQClient:
    residual: torch.Tensor  # (d,) e_i
    thresholds: EMAThresholdState  # tau_l per tensor, smoothed across the client's rounds


@dataclass(frozen=True)
class FedSparQ(RoundsAlgorithm):
    beta: float = 0.9  # EMA factor
    statistic: str = "mean_abs"  # statistic fed to the EMA: mean_abs | rms | std | max_abs
    factor: float = 1.0  # keep |u| >= factor * tau
    values: str = "fp16"  # precision of the kept values: fp16 | fp32
    error_feedback: bool = True
    selection: str = "ema"  # ema | static | random
    tau: float = 1e-3  # the static threshold (selection="static")
    residual: str = "full"  # full | quantization_only
    ema_init: str = "first"  # first | zero
    statistic_of: str = "update_plus_residual"  # update_plus_residual | update
    strict: bool = False  # |u| > tau instead of >=
    prox_mu: float = 0.01
    server_momentum: float = 0.9
    server_lr: float = 1.0
    name: str = "fedsparq"

    # ---------------------------------------------------------------- server

    def init_server(self, x0: torch.Tensor, layout: Layout) -> ServerState:
        return ServerState(x0.clone(), torch.zeros_like(x0) if self.server_momentum else None)

    broadcast = staticmethod(dense_broadcast)  # step 1: dense fp32
    downlink_content: ClassVar[str] = MODEL

    def aggregate(self, server: ServerState, uplinks: list[Uplink], ctx: RoundContext) -> ServerState:
        if not uplinks:
            return server
        return server_step(server, weighted_mean(uplinks, ctx.layout), self.server_lr, self.server_momentum)

    def model(self, server: ServerState) -> torch.Tensor:
        return server.x

    # ---------------------------------------------------------------- client

    def init_client(self, layout: Layout) -> FedSparQClient:
        T = len(layout)
        return FedSparQClient(torch.zeros(layout.numel),
                              EMAThresholdState(torch.zeros(T), torch.zeros(T, dtype=torch.int64)))

    def client_begin(self, state: FedSparQClient, received: torch.Tensor, ctx: ClientContext) -> LocalPlan:
        penalty = prox_penalty(received[: ctx.model.num_params], self.prox_mu) if self.prox_mu else None
        return LocalPlan(x0=received, penalty=penalty)  # step 2

    def client_end(self, state: FedSparQClient, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, FedSparQClient]:
        layout = ctx.layout
        delta = result.x - plan.x0  # (d,) step 2
        u = delta + state.residual if self.error_feedback else delta  # (d,) step 3
        source = u if self.statistic_of == "update_plus_residual" else delta
        thresholds = ema_update(state.thresholds, tensor_statistics(source, layout, self.statistic), self.beta,
                                self.ema_init)  # step 4a-b
        idx = self.select(u, layout, thresholds, ctx)  # step 4c
        msg = Message(layout.numel, Dense(u[idx].to(_VALUE_DTYPES[self.values])), indices=idx)  # step 4d
        residual = torch.zeros_like(u)
        if self.error_feedback:  # step 5: against the receiver's decode
            error = u - msg.expand(layout)
            if self.residual == "full":
                residual = error
            else:  # "quantization_only": only the rounding error of the kept coordinates
                residual[idx] = error[idx]
        return msg, FedSparQClient(residual, thresholds)

    def select(self, u: torch.Tensor, layout: Layout, thresholds: EMAThresholdState,
               ctx: ClientContext) -> torch.Tensor:
        if self.selection == "static":
            return threshold_indices(u, layout, torch.full((len(layout),), self.tau), self.strict)
        idx = threshold_indices(u, layout, self.factor * thresholds.tau, self.strict)
        if self.selection == "ema":
            return idx
        # "random": the same number of coordinates per tensor as the EMA rule, uniformly placed
        counts = torch.searchsorted(idx, layout.offsets()).diff().tolist()
        rng = ctx.rng("fedsparq-random")
        parts = [torch.randperm(e.numel, generator=rng)[:c].sort().values + e.offset
                 for e, c in zip(layout, counts, strict=True) if e.numel]
        return torch.cat(parts) if parts else idx
