"""SparsyFed: Powerpropagation, activation pruning, global magnitude pruning (arXiv 2504.05153).

Spec §3.2, as the authors' code runs it:
  model   every Conv2d and Linear becomes a Powerprop layer, w = sign(v)|v|^beta (beta 1.25),
          with activation pruning at the layer's current weight sparsity (models/powerprop.py)
  client  load the received state; local SGD; then prune all conv/linear weights v globally
          to the target sparsity s (round(s N) smallest |v| set to zero, biases and
          normalisation layers untouched); send the pruned state: its non-zero coordinates
  server  the weighted average of the clients' pruned states (FedAvg on parameters)
Round 1 starts dense, so no activation is pruned in it; from round 2 each layer's sparsity
comes from the received model. With beta > 1 a pruned weight cannot regrow in local
training; only aggregation (the union of client masks) regrows it.

The Top-K baseline of §3.4 is the same algorithm with beta = 1 and no activation pruning
(`topk_prune`); ZeroFL trains SWAT layers and prunes to s - m; FLASH trains one dense
warm-up round, then keeps the mask of the first global model fixed. The downlink is the
global state sent sparse, as the code's state_dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedpress.algorithms.base import ClientContext, RoundContext, RoundsAlgorithm, Uplink, weighted_mean
from fedpress.algorithms.fedavg import ServerState
from fedpress.compress.prune import density, magnitude_prune, mask_iou, pool_mask, regrowth
from fedpress.layout import Layout
from fedpress.local import FlatModel, LocalPlan, LocalResult
from fedpress.models.powerprop import powerpropagate, swatify
from fedpress.wire.message import Dense, Message


def prunable(model: FlatModel) -> torch.Tensor:
    """(d,) bool: the weights of every Conv2d and Linear (SparsyFed's global pruning pool)."""
    names = [f"{name}.weight" if name else "weight" for name, m in model.module.named_modules()
             if isinstance(m, nn.Conv2d | nn.Linear)]
    return pool_mask(model.layout, names)


def nonzero_message(x: torch.Tensor) -> Message:
    """x as a sparse message of its non-zero coordinates, fp32 values: exactly x on decode."""
    idx = x.nonzero().squeeze(1)
    return Message(x.numel(), Dense(x[idx]), indices=idx)


# --- the steps the family shares (spec §3.2 steps 1, 8; §3.6-3.7 measurements) ---


def no_client_state(layout: Layout) -> None:
    return None  # a fresh model from the received state every round (spec §3.2): no client state


def sparse_broadcast(server, ctx: RoundContext) -> tuple[Message, object]:
    """The global state's non-zeros (the code's state_dict, sent sparse)."""
    return nonzero_message(server.x), server


def plain_start(state: None, received: torch.Tensor, ctx: ClientContext) -> LocalPlan:
    return LocalPlan(x0=received)


def mean_of_states(server: ServerState, uplinks: list[Uplink], ctx: RoundContext) -> ServerState:
    """Step 8: FedAvg of the clients' pruned states."""
    if not uplinks:
        return server
    return ServerState(weighted_mean(uplinks, ctx.layout))


def state_model(server) -> torch.Tensor:
    return server.x


def sparsity_metrics(before, after, uplinks: list[Uplink], ctx: RoundContext) -> dict[str, float]:
    """Spec §3.6-3.7: densities, regrowth, mask agreement, and the paper's cost unit."""
    pool = prunable(ctx.model)
    clients = [u.message.expand(ctx.layout) for u in uplinks]
    pairs = [(a, b) for i, a in enumerate(clients) for b in clients[i + 1 :]]
    client_density = sum(density(c, pool) for c in clients) / max(len(clients), 1)
    global_density = density(after.x, pool)
    return {
        "global_density": global_density,
        "client_density": client_density,
        "regrowth": regrowth(before.x, after.x, pool),
        "iou_clients": sum(mask_iou(a, b, pool) for a, b in pairs) / len(pairs) if pairs else 1.0,
        "iou_previous": mask_iou(before.x, after.x, pool),
        # the paper's per-round cost: non-zero parameters down + up "as if one client" (§1.12)
        "paper_cost_params": (global_density + client_density) * int(pool.sum()),
    }


@dataclass(frozen=True)
class SparsyFed(RoundsAlgorithm):
    sparsity: float = 0.9  # target sparsity s of the conv/linear weights after local training
    beta: float = 1.25  # Powerprop exponent (1: plain weights, the Top-K baseline)
    activation_pruning: bool = True
    name: str = "sparsyfed"

    def prepare_model(self, module: nn.Module, generator: torch.Generator) -> nn.Module:
        """Re-parameterise conv and linear layers (skipped for the plain Top-K baseline)."""
        if self.beta == 1 and not self.activation_pruning:
            return module
        return powerpropagate(module, self.beta, generator, activation_pruning=self.activation_pruning)

    def init_server(self, x0: torch.Tensor, layout: Layout) -> ServerState:
        return ServerState(x0.clone())

    init_client = staticmethod(no_client_state)
    broadcast = staticmethod(sparse_broadcast)
    downlink_content: ClassVar[str] = "the global state's non-zeros (sparse already; clients train on its mask)"
    client_begin = staticmethod(plain_start)

    def client_end(self, state: None, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, None]:
        pruned = magnitude_prune(result.x, prunable(ctx.model), self.sparsity)  # (d,) step 6
        return nonzero_message(pruned), None  # step 7: the pruned state, sparse

    aggregate = staticmethod(mean_of_states)
    model = staticmethod(state_model)
    round_metrics = staticmethod(sparsity_metrics)


@dataclass(frozen=True)
class ZeroFL(RoundsAlgorithm):
    """ZeroFL (Qiu et al. 2022; spec §3.4): SWAT layers (weights and saved activations top-k
    sparsified to s during training, the first convolution left dense), then global pruning
    to s - m before upload; FedAvg on the states."""

    sparsity: float = 0.9
    mask_ratio: float = 0.0  # m: upload at sparsity s - m
    name: str = "zerofl"

    def prepare_model(self, module: nn.Module, generator: torch.Generator) -> nn.Module:
        return swatify(module, self.sparsity)

    def init_server(self, x0: torch.Tensor, layout: Layout) -> ServerState:
        return ServerState(x0.clone())

    init_client = staticmethod(no_client_state)
    broadcast = staticmethod(sparse_broadcast)
    downlink_content: ClassVar[str] = "the global state's non-zeros (sparse already; clients train on its mask)"
    client_begin = staticmethod(plain_start)
    aggregate = staticmethod(mean_of_states)
    model = staticmethod(state_model)
    round_metrics = staticmethod(sparsity_metrics)

    def client_end(self, state: None, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, None]:
        pruned = magnitude_prune(result.x, prunable(ctx.model), self.sparsity - self.mask_ratio)
        return nonzero_message(pruned), None


@dataclass(frozen=True)
class FLASHServer:
    x: torch.Tensor  # (d,) global state
    fixed: torch.Tensor  # () bool: whether the mask has been fixed (after round 1)


@dataclass(frozen=True)
class FLASH(RoundsAlgorithm):
    """FLASH (Babakniya et al. 2023; spec §3.4): round 1 trains dense and prunes to s; the
    server averages, prunes the average layer by layer to the clients' mean per-layer
    densities and then globally to exactly s: that support is the mask, fixed from then on.
    Later rounds train with the gradients of masked-out weights multiplied by 0."""

    sparsity: float = 0.9
    name: str = "flash"

    init_client = staticmethod(no_client_state)
    broadcast = staticmethod(sparse_broadcast)
    downlink_content: ClassVar[str] = "the global state's non-zeros (sparse already; clients train on its mask)"
    round_metrics = staticmethod(sparsity_metrics)

    def init_server(self, x0: torch.Tensor, layout: Layout) -> FLASHServer:
        return FLASHServer(x0.clone(), torch.tensor(False))

    def client_begin(self, state: None, received: torch.Tensor, ctx: ClientContext) -> LocalPlan:
        if ctx.round == 0:
            return LocalPlan(x0=received)  # the dense warm-up round
        P = ctx.model.num_params
        pool = prunable(ctx.model)[:P]
        free = (received[:P] != 0) | ~pool  # the fixed mask, read off the received model
        return LocalPlan(x0=received, grad_mask=free.to(torch.float32))

    def client_end(self, state: None, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, None]:
        return nonzero_message(magnitude_prune(result.x, prunable(ctx.model), self.sparsity)), None

    def aggregate(self, server: FLASHServer, uplinks: list[Uplink], ctx: RoundContext) -> FLASHServer:
        if not uplinks:
            return server
        mean = weighted_mean(uplinks, ctx.layout)
        pool = prunable(ctx.model)
        if bool(server.fixed):
            return FLASHServer(mean * ((mean != 0) | ~pool | (server.x != 0)), server.fixed)
        clients = [u.message.expand(ctx.layout) for u in uplinks]
        for e in ctx.layout:  # layer by layer to the clients' mean density of that layer
            if not bool(pool[e.offset]):
                continue
            layer = torch.zeros(ctx.layout.numel, dtype=torch.bool)
            layer[e.offset : e.stop] = True
            target = sum(density(c, layer) for c in clients) / len(clients)
            mean = magnitude_prune(mean, layer, 1 - target)
        return FLASHServer(magnitude_prune(mean, pool, self.sparsity), torch.tensor(True))

    model = staticmethod(state_model)
