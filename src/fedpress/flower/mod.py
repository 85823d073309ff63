"""fedpress compression for any Flower app: a client mod and a strategy wrapper.

    app = ClientApp(mods=[compress_mod(error_feedback(chain(top_k(0.01), fp16())))])
    strategy = Decompress(FedAvg(...))

The mod sits around an ordinary ClientApp's train handler. It remembers the model the
message brought, lets the handler train, and replaces the ArrayRecord of the reply (the
trained model) by one fedpress frame of the update: delta = trained - received, encoded by
the codec. The codec's state (an error-feedback residual) stays in the node's
Context.state. `Decompress` wraps any Flower Strategy: before the inner strategy
aggregates, it turns each frame back into the arrays received + delta, so the inner
strategy sees ordinary numpy arrays and never learns what crossed the wire.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedpress import wire
from fedpress.compress import Codec
from fedpress.flower.records import load_state, save_state, wire_bytes, wire_record
from fedpress.layout import Layout
from fedpress.rng import derive

MOD_STATE = "fedpress-mod"


def layout_of(record: ArrayRecord) -> Layout:
    """The flat layout of a Flower ArrayRecord: its arrays in key order."""
    return Layout.from_shapes([(key, tuple(array.shape)) for key, array in record.items()])


def flatten(record: ArrayRecord) -> torch.Tensor:
    """(d,) float32: every array of the record, in key order."""
    return torch.cat([torch.as_tensor(array.numpy(), dtype=torch.float32).reshape(-1) for array in record.values()])


def unflatten(x: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
    """Arrays shaped and typed as `like`'s, from a flat vector."""
    out, at = {}, 0
    for key, array in like.items():
        n = int(np.prod(array.shape, dtype=np.int64))
        values = x[at : at + n].numpy().reshape(array.shape).astype(array.numpy().dtype)
        out[key] = Array(values)
        at += n
    return ArrayRecord(out)


def compress_mod(codec: Codec, key: str = "arrays", seed: int = 0):
    """A Flower client mod: the train reply's `key` ArrayRecord becomes one fedpress frame of
    the update, encoded by `codec`, whose state is kept in Context.state."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type.split(".")[0] != "train" or key not in msg.content:
            return call_next(msg, context)
        received = msg.content[key]
        x0 = flatten(received)  # (d,)
        reply = call_next(msg, context)
        if not reply.has_content() or key not in reply.content:
            return reply
        layout = layout_of(received)
        delta = flatten(reply.content[key]) - x0  # (d,) what training changed
        found, state = load_state(context, MOD_STATE)
        state = state if found else codec.init(layout)
        round_ = int(msg.metadata.group_id) if msg.metadata.group_id.isdigit() else 0
        out, state = codec.encode(delta, layout, state, derive(seed, "mod", round_, context.node_id % 2**31))
        save_state(context, state, MOD_STATE)
        content = RecordDict({k: v for k, v in reply.content.items() if k != key})
        content[key] = wire_record(wire.encode(out, layout))
        reply.content = content
        return reply

    return mod


class Decompress(Strategy):
    """Wraps a Flower Strategy: fedpress frames in the train replies become arrays again
    (the arrays sent + the decoded delta) before the inner strategy aggregates them."""

    def __init__(self, inner: Strategy, key: str = "arrays"):
        self.inner, self.key = inner, key
        self.sent: ArrayRecord | None = None
        self.wire_bytes = 0  # frames received so far: len(bytes)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.sent = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        layout = layout_of(self.sent)
        x0 = flatten(self.sent)
        for r in replies:
            if not r.has_content() or self.key not in r.content:
                continue
            try:
                data = wire_bytes(r.content[self.key])
            except ValueError:
                continue  # an ordinary reply: leave it as it is
            self.wire_bytes += len(data)
            delta = wire.decode(data, layout).expand(layout)
            r.content[self.key] = unflatten(x0 + delta, self.sent)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
