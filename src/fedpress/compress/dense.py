"""Dense codecs: every coordinate, as fp32 (identity), fp16 or bf16."""

from __future__ import annotations

import torch

from fedpress.compress.codec import Codec, Promises, check_input, factory, stateless
from fedpress.layout import Layout
from fedpress.wire.message import Dense, Message


def _cast(name: str, dtype: torch.dtype):
    def encode(x: torch.Tensor, layout: Layout, state, rng=None):
        check_input(x, layout, name)
        # fp16/bf16: round to nearest even (spec §1.3). A value above fp16's 65504 becomes
        # inf, and the wire refuses it (NON_FINITE) rather than send garbage.
        return Message(layout.numel, Dense(x.to(dtype))), state

    return encode


@factory
def fp32() -> Codec:
    """Identity: the FedAvg baseline. decode(encode(x)) == x bit for bit."""
    return Codec("fp32", stateless, _cast("fp32", torch.float32), Promises(lossless=True))


@factory
def fp16() -> Codec:
    """IEEE half precision, 2 bytes a value; relative rounding error <= 2^-11."""
    return Codec("fp16", stateless, _cast("fp16", torch.float16), Promises(relative_error=2.0**-11))


@factory
def bf16() -> Codec:
    """bfloat16, 2 bytes a value, fp32's exponent range; relative rounding error <= 2^-8."""
    return Codec("bf16", stateless, _cast("bf16", torch.bfloat16), Promises(relative_error=2.0**-8))
