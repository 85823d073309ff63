"""Scaffnew (ProxSkip), FedComLoc and Scaffold (spec §1.7, §4, §4.4).

Scaffnew keeps a local model x_i and a control variate h_i on every client. A local step
is x_i <- x_i - gamma (g_i(x_i) - h_i); with probability p the clients communicate:
they send their models, the server averages them into x_bar, every client sets
x_i = x_bar and moves its control variate h_i <- h_i + (p / gamma)(x_bar - x_hat_i).
fedpress runs the round form of the spec: one shared draw L ~ Geometric(p) local steps,
then one communication. The control variates never cross the wire.

FedComLoc puts a compressor C (top-k on the model, r-bit quantization, or both) in one
place of that loop:

    com     the uplink model is C(x_hat_i)             (clients send compressed models)
    global  the downlink average is C(x_bar)           (the server sends a compressed model)
    local   gradients are taken at C(x_i)              (sparse / quantized local training)

With C the identity every variant is Scaffnew, bit for bit (tests/algorithms/test_fedcomloc.py).

A communication is two messages: the clients' uploads, then the server's reply x_bar to
the clients that uploaded (the `reply` / `client_reply` hooks of the contract). The next
round's sampled clients already hold x_bar; a client that missed it (round 0, or partial
participation) first downloads the server's last reply, the same bytes again. Partial
participation follows the spec's practical rule (§1.7): only sampled clients train and
move h_i; the others keep their old h_i and restart from the current x_bar. Scaffnew
assumes full participation (clients_per_round = num_clients), the configs' default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedpress.algorithms.base import ClientContext, RoundContext, RoundsAlgorithm, Uplink, weighted_mean
from fedpress.algorithms.params import AlgorithmSpec, Param, nonneg, positive, unit
from fedpress.compress import Codec, chain, fp32, minmax_affine, qsgd, top_k
from fedpress.errors import ConfigError
from fedpress.layout import Layout
from fedpress.local import CompressedPoint, FlatModel, LocalPlan, LocalResult
from fedpress.wire.message import Dense, Message

VARIANTS = ("com", "local", "global")


def geometric_steps(p: float, rng: torch.Generator) -> int:
    """L ~ Geometric(p) on {1, 2, ...}: the number of local steps before a communication,
    E[L] = 1/p (inverse-CDF draw: L = 1 + floor(log U / log(1 - p)), U in (0, 1])."""
    if p >= 1.0:
        return 1
    u = 1.0 - float(torch.rand((), dtype=torch.float64, generator=rng))  # (0, 1]
    return 1 + math.floor(math.log(u) / math.log1p(-p))


def compressed(codec: Codec, x: torch.Tensor, layout: Layout, rng: torch.Generator) -> Message:
    """C(x) as a message. FedComLoc's compressors are stateless (no error feedback, §4.2)."""
    msg, _ = codec.encode(x, layout, codec.init(layout), rng)
    return msg


@dataclass(frozen=True)
class ScaffnewServer:
    x: torch.Tensor  # (d,) x_bar, exactly as the clients decode it from `reply`
    reply: Message  # the last message that carried x_bar (re-sent to a client that missed it)
    holders: tuple[int, ...] = ()  # clients that received `reply`: their x_i is x_bar already


@dataclass(frozen=True)
class ScaffnewClient:
    control_variate: torch.Tensor  # (P,) h_i, on the parameters
    x: torch.Tensor | None = None  # (d,) x_i: the last x_bar this client received
    sent: torch.Tensor | None = None  # (d,) x_hat_i (or C(x_hat_i)) between upload and reply


@dataclass(frozen=True)
class FedComLoc(RoundsAlgorithm):
    """Scaffnew with a compressor at one place (`variant`); `compressor=None` is Scaffnew."""

    p: float = 0.2  # communication probability: E[local steps] = 1/p
    variant: str = "com"
    compressor: Codec | None = None
    # h_i moves toward x_bar - C(x_hat_i) (default), or x_bar - x_hat_i, the spec's literal line (§4.2), which
    # diverged under every compressor in this project's own study (docs/results.md); kept as an option
    cv_ref: str = "compressed"
    name: str = "fedcomloc"

    plain_sgd: ClassVar[bool] = True  # the control-variate algebra assumes x <- x - gamma (g - h): no momentum
    downlink_content: ClassVar[str] = ("x̄, replied to the uploaders and sent to the clients that do not hold it "
                                       "(FedComLoc compresses it with algorithm.variant = \"global\")")

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"fedcomloc: variant must be one of {VARIANTS}, got {self.variant!r}")
        if not 0 < self.p <= 1:
            raise ValueError(f"fedcomloc: p must be in (0, 1], got {self.p}")

    def _c(self, variant: str) -> Codec | None:
        return self.compressor if self.variant == variant else None

    def init_server(self, x0: torch.Tensor, layout: Layout) -> ScaffnewServer:
        return ScaffnewServer(x0.clone(), Message(layout.numel, Dense(x0.clone())))

    def init_client(self, layout: Layout) -> Any:
        return None  # built in client_begin, where the parameter count is known

    def broadcast(self, server: ScaffnewServer, ctx: RoundContext) -> tuple[dict[int, Message], ScaffnewServer]:
        # Only clients that do not hold x_bar download it; one message object for all of
        # them, so the runtime sends it once to many.
        return {c: server.reply for c in ctx.clients if c not in server.holders}, server

    def local_steps(self, ctx: ClientContext) -> int:
        """The round's L, one draw shared by every client (the server's coin, spec §1.7)."""
        return geometric_steps(self.p, ctx.shared_rng("local_steps"))

    def client_begin(self, state: ScaffnewClient | None, received: torch.Tensor | None,
                     ctx: ClientContext) -> LocalPlan:
        P = ctx.model.num_params
        h = torch.zeros(P) if state is None else state.control_variate  # (P,) h_i,0 = 0
        x = received if received is not None else state.x  # (d,) x_i
        grad_at = None
        if (codec := self._c("local")) is not None:  # FedComLoc-Local: g_i = grad f_i(C(x_i))
            grad_at = CompressedPoint(codec, ctx.model.param_layout, ctx.seed_of("local_compress"))
        return LocalPlan(x0=x, steps=self.local_steps(ctx), grad_offset=-h, grad_at=grad_at)

    def client_end(self, state: ScaffnewClient | None, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, ScaffnewClient]:
        x_hat = result.x  # (d,)
        if (codec := self._c("com")) is not None:  # FedComLoc-Com: send C(x_hat_i)
            msg = compressed(codec, x_hat, ctx.layout, ctx.rng("uplink"))
            sent = msg.expand(ctx.layout) if self.cv_ref == "compressed" else x_hat
        else:
            msg, sent = Message(ctx.layout.numel, Dense(x_hat)), x_hat
        h = -plan.grad_offset  # h_i, recovered exactly from the plan's offset -h_i
        return msg, ScaffnewClient(h, plan.x0, sent)

    def aggregate(self, server: ScaffnewServer, uplinks: list[Uplink], ctx: RoundContext) -> ScaffnewServer:
        if not uplinks:
            return server
        mean = weighted_mean(uplinks, ctx.layout, "uniform")  # (d,) x_bar = (1/n) sum_j x_hat_j
        if (codec := self._c("global")) is not None:  # FedComLoc-Global: x_bar = C(mean)
            reply = compressed(codec, mean, ctx.layout, ctx.rng("downlink"))
        else:
            reply = Message(ctx.layout.numel, Dense(mean))
        return ScaffnewServer(reply.expand(ctx.layout), reply, tuple(u.client for u in uplinks))

    def reply(self, server: ScaffnewServer, ctx: RoundContext) -> Message:
        return server.reply

    def client_reply(self, state: ScaffnewClient, x_bar: torch.Tensor, ctx: ClientContext) -> ScaffnewClient:
        """x_i = x_bar; h_i <- h_i + (p / gamma)(x_bar - x_hat_i) (spec §1.7, on the parameters)."""
        P = ctx.model.num_params
        h = state.control_variate + (self.p / ctx.lr) * (x_bar[:P] - state.sent[:P])
        return ScaffnewClient(h, x_bar, None)

    def round_metrics(self, before, after, uplinks: list[Uplink], ctx: RoundContext) -> dict:
        return {"local_steps": geometric_steps(self.p, ctx.rng("local_steps"))}

    def model(self, server: ScaffnewServer) -> torch.Tensor:
        return server.x


# --- Scaffold (Karimireddy et al. 2020), FedComLoc's heterogeneity-robust reference (§4.4) ---


def scaffold_layout(model: FlatModel) -> Layout:
    """What Scaffold sends each way: the model state, then a control variate on the parameters."""
    entries = [(e.name, e.shape) for e in model.layout]
    entries += [(f"control_variate/{e.name}", e.shape) for e in model.param_layout]
    return Layout.from_shapes(entries)


def _or_zeros(v: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.zeros(n) if v is None else v


@dataclass(frozen=True)
class ScaffoldServer:
    x: torch.Tensor  # (d,) global model
    control_variate: torch.Tensor | None = None  # (P,) c; None stands for zeros until the first step


@dataclass(frozen=True)
class Scaffold(RoundsAlgorithm):
    """Option II of Scaffold: c_i+ = c_i - c + (x - y_i) / (K eta). Both the model and the
    control variate cross the wire in both directions: twice FedAvg's bytes, counted."""

    server_lr: float = 1.0
    name: str = "scaffold"
    plain_sgd: ClassVar[bool] = True
    downlink_content: ClassVar[str] = "[x, c], the model and the server's control variate in one message"

    def wire_layout(self, model: FlatModel) -> Layout:
        return scaffold_layout(model)

    def init_server(self, x0: torch.Tensor, layout: Layout) -> ScaffoldServer:
        return ScaffoldServer(x0.clone())

    def init_client(self, layout: Layout) -> Any:
        return None  # c_i = 0, sized in client_begin

    def broadcast(self, server: ScaffoldServer, ctx: RoundContext) -> tuple[Message, ScaffoldServer]:
        both = torch.cat([server.x, _or_zeros(server.control_variate, ctx.model.num_params)])  # (d + P,)
        return Message(both.numel(), Dense(both)), server

    def client_begin(self, state: torch.Tensor | None, received: torch.Tensor, ctx: ClientContext) -> LocalPlan:
        d, P = ctx.layout.numel, ctx.model.num_params
        x, c = received[:d], received[d:]  # (d,), (P,)
        c_i = _or_zeros(state, P)
        return LocalPlan(x0=x, grad_offset=c - c_i)  # local step: y <- y - eta (g - c_i + c)

    def client_end(self, state: torch.Tensor | None, plan: LocalPlan, result: LocalResult,
                   ctx: ClientContext) -> tuple[Message, torch.Tensor]:
        P = ctx.model.num_params
        c_i = _or_zeros(state, P)
        # c_i+ = c_i - c + (x - y) / (K eta), and c_i - c = -grad_offset exactly
        c_next = (plan.x0[:P] - result.x[:P]) / (result.steps * ctx.lr) - plan.grad_offset  # (P,)
        both = torch.cat([result.x - plan.x0, c_next - c_i])  # (d + P,) model delta, control delta
        return Message(both.numel(), Dense(both)), c_next

    def aggregate(self, server: ScaffoldServer, uplinks: list[Uplink], ctx: RoundContext) -> ScaffoldServer:
        if not uplinks:
            return server
        d = ctx.layout.numel
        mean = weighted_mean(uplinks, scaffold_layout(ctx.model), "uniform")  # (d + P,)
        share = len(uplinks) / max(ctx.population, len(uplinks))  # |S| / N
        c = _or_zeros(server.control_variate, ctx.model.num_params)
        return ScaffoldServer(server.x + self.server_lr * mean[:d], c + share * mean[d:])

    def model(self, server: ScaffoldServer) -> torch.Tensor:
        return server.x


# --- registry entries ---

COMPRESSORS = ("identity", "topk", "qsgd", "minmax", "topk_qsgd", "topk_minmax")


def compressor(kind: str, ratio: float, bits: int, bucket: int) -> Codec:
    """FedComLoc's C (spec §4.3): top-k on the model with kept fraction K, r-bit quantization
    (QSGD with s = 2^(r-1) - 1 levels per sign, or per-tensor min-max affine), or both."""
    if kind in ("minmax", "topk_minmax") and bits > 8:
        raise ConfigError(f"algorithm.bits = {bits}: min-max affine codes hold at most 8 bits; use qsgd for more")
    quantizer = {"qsgd": lambda: qsgd(2 ** (bits - 1) - 1, bucket or None), "minmax": lambda: minmax_affine(bits)}
    if kind == "identity":
        return fp32()
    if kind == "topk":
        return top_k(ratio)
    if kind in quantizer:
        return quantizer[kind]()
    return chain(top_k(ratio), quantizer[kind.removeprefix("topk_")]())


P_PARAM = {"p": Param(0.2, "communication probability: L ~ Geometric(p) local steps, E[L] = 1/p", check=unit,
                      rule="in (0, 1]")}
SPECS = {
    "scaffnew": AlgorithmSpec(
        "Scaffnew / ProxSkip: control variates, L ~ Geometric(p) local steps per communication, dense both ways",
        P_PARAM, lambda n, p: FedComLoc(p=p["p"], name=n)),
    "fedcomloc": AlgorithmSpec(
        "FedComLoc: Scaffnew with top-k / quantization on the uplink (com), the downlink (global) or the "
        "local model where gradients are taken (local)",
        {**P_PARAM,
         "variant": Param("com", "where the compressor acts", choices=VARIANTS),
         "compressor": Param("topk", "C: top-k on the model, r-bit quantization, or top-k then quantization",
                             choices=COMPRESSORS),
         "ratio": Param(0.3, "K: fraction of the model's coordinates top-k keeps", check=unit, rule="in (0, 1]"),
         "bits": Param(8, "r: bits per quantized value", check=lambda v: 2 <= v <= 16, rule="in [2, 16]"),
         "bucket": Param(0, "QSGD bucket size (0: one norm for the whole model)", check=nonneg, rule=">= 0"),
         "cv_ref": Param("compressed", "h_i moves toward x_bar - C(x_hat_i) (default: sum h_i stays 0) or "
                                       "x_bar - x_hat_i (the spec's literal line)",
                         choices=("uncompressed", "compressed"))},
        lambda n, p: FedComLoc(p=p["p"], variant=p["variant"],
                               compressor=compressor(p["compressor"], p["ratio"], p["bits"], p["bucket"]),
                               cv_ref=p["cv_ref"], name=n)),
    "scaffold": AlgorithmSpec(
        "Scaffold (option II): control variates sent with the model both ways, 2x FedAvg's bytes",
        {"server_lr": Param(1.0, "server learning rate eta_g", check=positive, rule="> 0")},
        lambda n, p: Scaffold(server_lr=p["server_lr"], name=n)),
}
