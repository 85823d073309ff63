"""Composition: `chain` (select, then quantize what was selected) and `error_feedback`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedpress.compress.codec import Codec, Promises, check_input, factory
from fedpress.layout import Layout
from fedpress.wire.message import Message, value_layout


@dataclass(frozen=True)
class ChainState:
    parts: tuple  # one state per codec of the chain


@factory
def chain(*codecs: Codec) -> Codec:
    """Apply codecs in turn; each after the first sees only the values the previous sent.

    `chain(top_k(0.01), fp16())`: top-k picks the coordinates, fp16 encodes the k kept
    values. Only the first codec may select coordinates; the later ones must send every
    value they are given (dense, QSGD, min-max affine). A later codec sees the kept
    values laid out one segment per tensor (`wire.value_layout`), so per-tensor
    quantizers keep working after a selection.
    """
    if len(codecs) < 2:
        raise ValueError("chain: give at least two codecs")
    probe = Layout.flat(1)
    for c in codecs[1:]:
        # A later codec sees a value layout that changes with every selection, so it could
        # not keep per-coordinate state: only stateless codecs may follow the first.
        if c.init(probe) is not None:
            raise ValueError(f"chain: {c.name} keeps state; only the first codec of a chain may")
    name = " -> ".join(c.name for c in codecs)

    def init(layout: Layout) -> ChainState:
        return ChainState((codecs[0].init(layout), *(None for _ in codecs[1:])))

    def encode(x: torch.Tensor, layout: Layout, state: ChainState, rng=None):
        check_input(x, layout, name)
        msg, first_state = codecs[0].encode(x, layout, state.parts[0], rng)
        states = [first_state]
        for codec, st in zip(codecs[1:], state.parts[1:], strict=True):
            vlayout = value_layout(layout, msg.coordinates())
            inner, st = codec.encode(msg.values.dequantize(vlayout), vlayout, st, rng)
            if inner.indices is not None or inner.seed is not None:
                raise ValueError(f"chain: only the first codec may select coordinates, {codec.name} did")
            msg = Message(msg.d, inner.values, indices=msg.indices, seed=msg.seed)
            states.append(st)
        return msg, ChainState(tuple(states))

    promises = codecs[0].promises
    for c in codecs[1:]:
        promises = _then(promises, c.promises)
    return Codec(name, init, encode, promises)


def _then(a: Promises, b: Promises) -> Promises:
    """What C_b(C_a(x)) still guarantees, from what each guarantees."""
    if b.lossless:
        return a
    if a.lossless:
        return b
    stochastic = a.stochastic or b.stochastic
    if a.unbiased and b.unbiased and a.variance and b.variance:
        # E||C_b(C_a x) - x||^2 = E||C_b(y) - y||^2 + E||y - x||^2 <= ((1+w_a)(1+w_b) - 1)||x||^2
        return Promises(
            unbiased=True,
            variance=lambda L: (1 + a.variance(L)) * (1 + b.variance(L)) - 1,
            stochastic=stochastic,
        )
    if a.contraction and b.relative_error is not None:
        # ||C_b(y) - x|| <= ||C_b(y) - y|| + ||y - x|| <= (r + sqrt(1 - delta)) ||x||
        r = b.relative_error

        def contraction(L: Layout) -> float:
            return 1 - (r + math.sqrt(max(0.0, 1 - a.contraction(L)))) ** 2

        return Promises(contraction=contraction, stochastic=stochastic)
    return Promises(stochastic=stochastic)


@dataclass(frozen=True)
class ErrorFeedbackState:
    residual: torch.Tensor  # (d,) fp32: what was meant but not (yet) delivered
    inner: object  # the wrapped codec's state


@factory
def error_feedback(codec: Codec) -> Codec:
    """Error feedback (EF14; spec §1.6): compress x + residual, keep what did not arrive.

        u = x + e ;  m = C(u) ;  e <- u - decode(m)

    The residual is taken against the receiver's own decode, so quantization and fp16
    rounding errors are fed back too, not only the dropped coordinates. Invariant:
    decode(m) + e_new == u; bit for bit whenever u - decode(m) is exact in fp32, which it
    is for selection and fp16/bf16 rounding (Sterbenz).
    """
    name = f"error_feedback({codec.name})"

    def init(layout: Layout) -> ErrorFeedbackState:
        return ErrorFeedbackState(torch.zeros(layout.numel), codec.init(layout))

    def encode(x: torch.Tensor, layout: Layout, state: ErrorFeedbackState, rng=None):
        check_input(x, layout, name)
        u = x + state.residual  # (d,)
        msg, inner = codec.encode(u, layout, state.inner, rng)
        return msg, ErrorFeedbackState(u - msg.expand(layout), inner)

    return Codec(name, init, encode, Promises(stochastic=codec.promises.stochastic))
