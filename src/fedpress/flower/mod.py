"""fedpress compression for any Flower app: a client mod and a strategy wrapper.

    app = ClientApp(mods=[compress_mod(error_feedback(chain(top_k(0.01), fp16())))])
    strategy = Decompress(FedAvg(...))

The mod sits around an ordinary ClientApp's train handler. It remembers the model the
message brought, lets the handler train, and replaces the ArrayRecord of the reply (the
trained model) by one fedpress frame of the update: delta = trained - received, encoded by
the codec. The codec's state (an error-feedback residual) stays in the node's
Context.state. `Decompress` wraps a Flower strategy of either API: before the inner
strategy aggregates, it turns each frame back into the arrays received + delta, so the
inner strategy sees ordinary numpy arrays and never learns what crossed the wire.

Both of Flower 1.41's strategy APIs work:

- the Message API, `flwr.serverapp.strategy.Strategy` (`configure_train`/`aggregate_train`,
  run by `strategy.start(grid=...)` in a `@app.main()`): the frame replaces the reply's
  `key` ("arrays") ArrayRecord;
- the legacy API, `flwr.server.strategy.Strategy` (`configure_fit`/`aggregate_fit`, run by
  `ServerApp(server_fn=...)` returning `ServerAppComponents`, with a `NumPyClient`/`Client`
  `client_fn` ClientApp): Flower carries the fit parameters as the "fitins.parameters"
  ArrayRecord and returns them as "fitres.parameters" (flwr.compat.common.recorddict_compat);
  the mod compresses the latter, and `Decompress(legacy_strategy)` returns a
  `LegacyDecompress` that decodes each `FitRes.parameters` in `aggregate_fit`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SType
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedpress import wire
from fedpress.compress import Codec
from fedpress.flower.records import WIRE_STYPE, NotFedpress, load_state, save_state, wire_bytes, wire_record
from fedpress.layout import Layout
from fedpress.rng import derive

MOD_STATE = "fedpress-mod"
# The ArrayRecords of a legacy (NumPyClient / Client) train message and of its reply, as
# flwr.compat.common.recorddict_compat names them (fitins_to_recorddict, fitres_to_recorddict).
LEGACY_FIT_IN, LEGACY_FIT_OUT = "fitins.parameters", "fitres.parameters"

Named = list[tuple[str, np.ndarray]]


def named_arrays(record: ArrayRecord) -> Named:
    """The record's arrays, in key order, as numpy. Shapes and dtypes come from the data:
    the legacy API's records carry shape () and dtype "" (parameters_to_arrayrecord)."""
    return [(key, array.numpy()) for key, array in record.items()]


def numeric(record) -> bool:
    """Whether the record holds a model fedpress can compress: an ArrayRecord of one or more
    numpy arrays. Not so for empty legacy Parameters (one Array of data b"") or other bytes."""
    if not isinstance(record, ArrayRecord) or len(record) == 0:
        return False
    return all(a.stype == SType.NUMPY and len(a.data) > 0 for a in record.values())


def layout_of(record: ArrayRecord | Named) -> Layout:
    """The flat layout of a Flower ArrayRecord (or of named_arrays): its arrays in key order."""
    named = named_arrays(record) if isinstance(record, ArrayRecord) else record
    return Layout.from_shapes([(key, tuple(a.shape)) for key, a in named])


def flatten(record: ArrayRecord | Named) -> torch.Tensor:
    """(d,) float32: every array of the record, in key order."""
    named = named_arrays(record) if isinstance(record, ArrayRecord) else record
    if not named:
        return torch.zeros(0)
    return torch.cat([torch.as_tensor(a, dtype=torch.float32).reshape(-1) for _, a in named])


def unflatten_arrays(x: torch.Tensor, like: Named) -> Named:
    """Arrays shaped and typed as `like`'s, from a flat vector."""
    out, at = [], 0
    for key, a in like:
        n = int(np.prod(a.shape, dtype=np.int64))
        out.append((key, x[at : at + n].numpy().reshape(a.shape).astype(a.dtype)))
        at += n
    return out


def unflatten(x: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
    """Arrays shaped and typed as `like`'s, from a flat vector."""
    return ArrayRecord({key: Array(a) for key, a in unflatten_arrays(x, named_arrays(like))})


def compress_mod(codec: Codec, key: str = "arrays", seed: int = 0):
    """A Flower client mod: the train reply's `key` ArrayRecord becomes one fedpress frame of
    the update, encoded by `codec`, whose state is kept in Context.state. A legacy train
    message (a NumPyClient/Client app: "fitins.parameters" in, "fitres.parameters" out) is
    compressed the same way when the message has no `key` record."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type.split(".")[0] != "train":
            return call_next(msg, context)
        if key in msg.content:
            in_key = out_key = key
        elif LEGACY_FIT_IN in msg.content:
            in_key, out_key = LEGACY_FIT_IN, LEGACY_FIT_OUT
        else:
            return call_next(msg, context)
        if not numeric(msg.content[in_key]):
            return call_next(msg, context)  # no numpy model came (e.g. a tree ensemble's bytes)
        received = named_arrays(msg.content[in_key])
        x0 = flatten(received)  # (d,)
        reply = call_next(msg, context)
        if not reply.has_content() or out_key not in reply.content or not numeric(reply.content[out_key]):
            return reply
        layout = layout_of(received)
        trained = named_arrays(reply.content[out_key])
        if [(k, tuple(a.shape)) for k, a in trained] != [(e.name, e.shape) for e in layout.entries]:
            raise ValueError(f"compress_mod: the train reply's {out_key!r} arrays do not have the "
                             f"names and shapes of the {in_key!r} arrays received; it sends "
                             "trained - received, so they must")
        delta = flatten(trained) - x0  # (d,) what training changed
        found, state = load_state(context, MOD_STATE)
        state = state if found else codec.init(layout)
        round_ = int(msg.metadata.group_id) if msg.metadata.group_id.isdigit() else 0
        out, state = codec.encode(delta, layout, state, derive(seed, "mod", round_, context.node_id % 2**31))
        save_state(context, state, MOD_STATE)
        content = RecordDict({k: v for k, v in reply.content.items() if k != out_key})
        content[out_key] = wire_record(wire.encode(out, layout))
        reply.content = content
        return reply

    return mod


def _restore(data: bytes, sent: Named) -> Named:
    """The arrays a frame stands for: sent + the decoded delta, shaped and typed as sent."""
    layout = layout_of(sent)
    delta = wire.decode(data, layout).expand(layout)
    return unflatten_arrays(flatten(sent) + delta, sent)


class Decompress(Strategy):
    """Wraps a Flower Strategy: fedpress frames in the train replies become arrays again
    (the arrays sent + the decoded delta) before the inner strategy aggregates them.

    `inner` is a Message-API strategy (`flwr.serverapp.strategy.Strategy`), or a legacy one
    (`flwr.server.strategy.Strategy`), for which a `LegacyDecompress` is returned instead.
    Anything else is refused here, at construction."""

    def __new__(cls, inner, key: str = "arrays"):
        if isinstance(inner, LegacyStrategy):
            return LegacyDecompress(inner)
        if not isinstance(inner, Strategy):
            raise TypeError(
                f"Decompress wraps a Flower strategy: a flwr.serverapp.strategy.Strategy (Message API, "
                f"run by strategy.start(grid=...)) or a flwr.server.strategy.Strategy (legacy API, run "
                f"by ServerApp(server_fn=...)); got {type(inner).__module__}.{type(inner).__qualname__}")
        return super().__new__(cls)

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
        sent = named_arrays(self.sent) if self.sent is not None else []
        for r in replies:
            if not r.has_content() or self.key not in r.content:
                continue
            try:
                data = wire_bytes(r.content[self.key])
            except ValueError:
                continue  # an ordinary reply: leave it as it is
            self.wire_bytes += len(data)
            r.content[self.key] = ArrayRecord({k: Array(a) for k, a in _restore(data, sent)})
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


class LegacyDecompress(LegacyStrategy):
    """Decompress for Flower's legacy strategy API (flwr.server.strategy.Strategy, the one
    `ServerApp(server_fn=...)` / `ServerAppComponents` and `Server.fit_round` drive).

    configure_fit remembers the parameters each client is sent (by ClientProxy.cid);
    aggregate_fit turns every FitRes whose parameters are one fedpress frame (tensor_type
    fedpress/wire-v1, as Flower's recorddict_to_fitres makes of the mod's reply) back into
    ordinary numpy Parameters: sent + decoded delta. Everything else goes to `inner`."""

    def __init__(self, inner: LegacyStrategy):
        self.inner = inner
        self.sent: dict[str, Named] = {}  # ClientProxy.cid -> the arrays it was sent this round
        self.wire_bytes = 0  # frames received so far: len(bytes)

    def __repr__(self) -> str:
        return f"Decompress({self.inner!r})"

    def initialize_parameters(self, client_manager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        instructions = list(self.inner.configure_fit(server_round, parameters, client_manager))
        decoded: dict[int, Named] = {}  # id(Parameters) -> arrays: FedAvg sends one object to all
        self.sent = {}
        for proxy, fit_ins in instructions:
            p = fit_ins.parameters
            if id(p) not in decoded:
                arrays = parameters_to_ndarrays(p) if p.tensor_type == SType.NUMPY else []
                decoded[id(p)] = [(str(i), a) for i, a in enumerate(arrays)]  # the keys Flower gives them
            self.sent[proxy.cid] = decoded[id(p)]
        return instructions

    def aggregate_fit(self, server_round: int, results: list, failures: list):
        for proxy, res in results:
            data = self._frame(res)
            if data is None:
                continue  # an ordinary reply: leave it as it is
            if proxy.cid not in self.sent:
                raise ValueError(f"Decompress: a fedpress frame from client {proxy.cid!r}, which "
                                 f"configure_fit sent nothing in round {server_round}")
            self.wire_bytes += len(data)
            res.parameters = ndarrays_to_parameters([a for _, a in _restore(data, self.sent[proxy.cid])])
        return self.inner.aggregate_fit(server_round, results, failures)

    @staticmethod
    def _frame(res: FitRes) -> bytes | None:
        p = res.parameters
        if p.tensor_type != WIRE_STYPE:
            return None
        if len(p.tensors) != 1:
            raise NotFedpress(f"expected one tensor of type {WIRE_STYPE!r}, got {len(p.tensors)}")
        return p.tensors[0]

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager):
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list, failures: list):
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters):
        return self.inner.evaluate(server_round, parameters)
