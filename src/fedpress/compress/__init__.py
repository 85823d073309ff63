"""fedpress.compress: codecs as pure functions with explicit state.

    codec = error_feedback(chain(top_k(0.01), fp16()))
    state = codec.init(layout)
    msg, state = codec.encode(update, layout, state, rng)   # a wire.Message
    x_hat = codec.decode(msg, layout)
"""

from fedpress.compress.codec import Codec, Promises, decode
from fedpress.compress.compose import ChainState, ErrorFeedbackState, chain, error_feedback
from fedpress.compress.dense import bf16, fp16, fp32
from fedpress.compress.quantize import minmax_affine, qsgd
from fedpress.compress.select import (
    STATISTICS,
    EMAThresholdState,
    ema_threshold,
    random_k,
    threshold,
    top_k,
    top_k_indices,
)

__all__ = [
    "STATISTICS",
    "ChainState",
    "Codec",
    "EMAThresholdState",
    "ErrorFeedbackState",
    "Promises",
    "bf16",
    "chain",
    "decode",
    "ema_threshold",
    "error_feedback",
    "fp16",
    "fp32",
    "minmax_affine",
    "qsgd",
    "random_k",
    "threshold",
    "top_k",
    "top_k_indices",
]
