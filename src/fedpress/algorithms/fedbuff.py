"""FedBuff, QAFeL and QAFeL's Naive baseline: buffered asynchronous aggregation (spec §1.8, §5).

All three share the server of FedBuff (spec §1.8): a buffer B of the updates that arrive,
a counter k, a version t; when k reaches K the server steps and empties the buffer. They
differ in where a client starts and what crosses the wire (spec §5.2):

| method  | a client starts from | uplink   | downlink                                            |
|---------|----------------------|----------|-----------------------------------------------------|
| FedBuff | x                    | Δ (fp32) | x (fp32) to every client that starts                |
| QAFeL   | x̂, the hidden state  | Q_c(Δ)   | x̂ once when a client joins; then q = Q_s(x − x̂)     |
|         |                      |          | after every server step, to every client holding x̂  |
| Naive   | Q_s(x)               | Q_c(Δ)   | Q_s(x) to every client that starts                  |

QAFeL's hidden state x̂ is held by the server and by every client; both add the same
decoded q after each server step, so they stay equal (the engine checks it). Q_c and Q_s
are any codecs: `qsgd(s)` (logistic regression, spec §5.3), `minmax_affine(b)` (FLSim's
channel, the neural-network runs), `top_k`, or `fp32` (identity: QAFeL then equals
FedBuff bit for bit, because fl(x̂ + fl(x − x̂)) = x when x̂ = x before the step).

Staleness weighting and the max-staleness filter belong to the engine (`[async]` in the
config): the engine computes w(τ) and hands it over as `Uplink.staleness_weight`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from fedpress.algorithms.base import BufferedAlgorithm, ClientContext, RoundContext, Uplink
from fedpress.algorithms.params import AlgorithmSpec, Param, nonneg, positive, unit
from fedpress.compress import Codec, fp32, minmax_affine, qsgd, top_k
from fedpress.layout import Layout
from fedpress.local import LocalPlan, LocalResult
from fedpress.wire.message import Dense, Message

STARTS = ("model", "hidden_state", "quantized_model")  # FedBuff, QAFeL, Naive (spec §5.2 step 1)
SERVER_STEPS = ("mean", "sum")  # x += η B / K (logistic-regression code) or x += η B (FLSim), spec §5.6.1


@dataclass(frozen=True)
class BufferState:
    """The server of spec §5.2: global model, hidden state, buffer, counter, version."""

    x: torch.Tensor  # (d,) global model
    x_hat: torch.Tensor | None  # (d,) hidden state (QAFeL only)
    buffer: torch.Tensor  # (d,) B = Σ w(τ_i) c_i since the last server step
    count: int  # k: updates in the buffer
    version: int  # t: server steps taken


@dataclass(frozen=True)
class Buffered(BufferedAlgorithm):
    """One algorithm, three starting points (see the module table)."""

    start: str = "model"
    client_codec: Codec = field(default_factory=fp32)  # Q_c, on Δ
    server_codec: Codec = field(default_factory=fp32)  # Q_s, on x − x̂ (QAFeL) or x (Naive)
    buffer_size: int = 10  # K
    server_lr: float = 1.0  # η_g
    server_step: str = "mean"
    name: str = "fedbuff"

    def __post_init__(self):
        if self.start not in STARTS:
            raise ValueError(f"{self.name}: start must be one of {STARTS}, got {self.start!r}")
        if self.server_step not in SERVER_STEPS:
            raise ValueError(f"{self.name}: server_step must be one of {SERVER_STEPS}, got {self.server_step!r}")

    # ---------------------------------------------------------------- server

    def init_server(self, x0: torch.Tensor, layout: Layout) -> BufferState:
        x_hat = x0.clone() if self.start == "hidden_state" else None  # x̂_0 = x_0 (spec §5.2)
        return BufferState(x0.clone(), x_hat, torch.zeros_like(x0), 0, 0)

    def init_client(self, layout: Layout) -> None:
        return None  # a client keeps no state of its own; QAFeL's x̂ copy is the subscribers' state

    def join(self, server: BufferState, ctx: RoundContext) -> Message | None:
        """QAFeL's hidden state x̂, whole and exact: the runtime keeps it and catches each
        client up from the version it holds (spec §5.2: "a client joining late needs x̂
        once"; runtime/downlink.py). None: clients download at every start."""
        if self.start != "hidden_state":
            return None
        return Message(ctx.layout.numel, Dense(server.x_hat))

    def dispatch(self, server: BufferState, ctx: ClientContext) -> tuple[Message | None, BufferState]:
        """What a client that starts now downloads (spec §5.2 step 1): x (FedBuff), Q_s(x) drawn
        afresh for this client (Naive), or nothing: a QAFeL client starts from its copy of x̂."""
        if self.start == "model":
            return Message(ctx.layout.numel, Dense(server.x)), server
        if self.start == "quantized_model":
            msg, _ = self.server_codec.encode(
                server.x, ctx.layout, self.server_codec.init(ctx.layout), ctx.rng("downlink")
            )
            return msg, server
        return None, server

    def receive(self, server: BufferState, uplink: Uplink, ctx: RoundContext) -> BufferState:
        """Step 4: B += w(τ_i) c_i ; k += 1."""
        c = uplink.message.expand(ctx.layout)
        return replace(server, buffer=server.buffer + uplink.staleness_weight * c, count=server.count + 1)

    def ready(self, server: BufferState) -> bool:
        return server.count >= self.buffer_size

    def flush(self, server: BufferState, ctx: RoundContext) -> tuple[BufferState, Message | None]:
        """Step 5: x ← x + η_g B / K (or η_g B); QAFeL: q = Q_s(x − x̂), x̂ ← x̂ + q, broadcast q."""
        lr = self.server_lr / self.buffer_size if self.server_step == "mean" else self.server_lr
        x = server.x + lr * server.buffer
        cleared = BufferState(x, server.x_hat, torch.zeros_like(x), 0, server.version + 1)
        if self.start != "hidden_state":
            return cleared, None
        q, _ = self.server_codec.encode(
            x - server.x_hat, ctx.layout, self.server_codec.init(ctx.layout), ctx.rng("broadcast")
        )
        return replace(cleared, x_hat=self.apply_broadcast(server.x_hat, q, ctx.layout)), q

    def model(self, server: BufferState) -> torch.Tensor:
        return server.x

    # ---------------------------------------------------------------- client

    @property
    def keeps_hidden_state(self) -> bool:
        return self.start == "hidden_state"

    def apply_broadcast(self, x_hat: torch.Tensor, q: Message, layout: Layout) -> torch.Tensor:
        """Both sides of spec §5.2 step 5: x̂ ← x̂ + q (the server with its own q, every client
        with the q it decoded from the same bytes)."""
        return x_hat + q.expand(layout)

    def client_begin(self, state: None, received: torch.Tensor, ctx: ClientContext) -> LocalPlan:
        return LocalPlan(x0=received)  # y_0: x, x̂ or Q_s(x)

    def client_end(self, state: None, plan: LocalPlan, result: LocalResult, ctx: ClientContext) -> tuple[Message, None]:
        delta = result.x - plan.x0  # Δ_i = y_Q − y_0 (spec §1.1 sign convention)
        msg, _ = self.client_codec.encode(delta, ctx.layout, self.client_codec.init(ctx.layout), ctx.rng("uplink"))
        return msg, None


# -------------------------------------------------------------------- registry entries

QUANTIZERS = ("qsgd", "minmax_affine", "top_k", "fp32")


def quantizer(kind: str, levels: int, bucket: int, bits: int, ratio: float) -> Codec:
    """Q_c or Q_s from its config keys: QSGD (spec §1.4), FLSim's min-max channel (§1.5), top-k, identity."""
    if kind == "qsgd":
        return qsgd(levels, bucket or None)
    if kind == "minmax_affine":
        return minmax_affine(bits)
    if kind == "top_k":
        return top_k(ratio)
    return fp32()


def _quantizer_params(side: str, who: str, levels: int, kind: str) -> dict[str, Param]:
    return {
        f"{side}_quantizer": Param(kind, f"{who}: which codec", choices=QUANTIZERS),
        f"{side}_levels": Param(
            levels, f"{who}, qsgd: levels per sign s", check=lambda v: 1 <= v <= 32767, rule="in [1, 32767]"
        ),
        f"{side}_bucket": Param(
            0, f"{who}, qsgd: bucket size (0: one norm for the whole vector, as QAFeL)", check=nonneg, rule=">= 0"
        ),
        f"{side}_bits": Param(
            4, f"{who}, minmax_affine: bits per weight-tensor entry", check=lambda v: 1 <= v <= 8, rule="in [1, 8]"
        ),
        f"{side}_ratio": Param(0.01, f"{who}, top_k: fraction of coordinates kept", check=unit, rule="in (0, 1]"),
    }


SERVER_PARAMS = {
    "buffer_size": Param(10, "K: updates per server step", check=lambda v: v >= 1, rule=">= 1"),
    "server_lr": Param(1.0, "η_g", check=positive, rule="> 0"),
    "server_step": Param(
        "mean", "x += η_g B / K (mean, logistic-regression code) or η_g B (sum, FLSim)", choices=SERVER_STEPS
    ),
}
QUANTIZED_PARAMS = {
    **SERVER_PARAMS,
    **_quantizer_params("client", "Q_c (uplink)", 4, "qsgd"),
    **_quantizer_params("server", "Q_s (downlink)", 8, "qsgd"),
}


def _side(p, side: str) -> Codec:
    return quantizer(
        p[f"{side}_quantizer"], p[f"{side}_levels"], p[f"{side}_bucket"], p[f"{side}_bits"], p[f"{side}_ratio"]
    )


def _build(start: str):
    def build(name: str, p) -> Buffered:
        codecs = {"client_codec": _side(p, "client"), "server_codec": _side(p, "server")} if start != "model" else {}
        return Buffered(
            start=start,
            buffer_size=p["buffer_size"],
            server_lr=p["server_lr"],
            server_step=p["server_step"],
            name=name,
            **codecs,
        )

    return build


SPECS: dict[str, AlgorithmSpec] = {
    "fedbuff": AlgorithmSpec(
        "FedBuff (asynchronous): buffer of K fp32 updates, clients start from x", SERVER_PARAMS, _build("model"),
        runtime="buffered",
    ),
    "qafel": AlgorithmSpec(
        "QAFeL (asynchronous): hidden state x̂ shared by server and clients, Q_c(Δ) up, "
        "Q_s(x − x̂) broadcast after every server step",
        QUANTIZED_PARAMS,
        _build("hidden_state"),
        runtime="buffered",
    ),
    "naive": AlgorithmSpec(
        "QAFeL's Naive baseline (asynchronous): clients start from Q_s(x), Q_c(Δ) up",
        QUANTIZED_PARAMS,
        _build("quantized_model"),
        runtime="buffered",
    ),
}
