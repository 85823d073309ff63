"""The simulator's fleet: every client of a synchronous round in this process.

A runtime hands each sampled client the bytes of its downlink (or None: it holds what it
needs already; or, with a [downlink] table, the `Catchup` that brings its copy of x̂ up to
date) and gets back a `ClientReply`. Here the clients' states live in one store
and their turns run as one batch through the executor (`runtime.turn.client_turns`, the
same function the Flower ClientApp calls for its one client).
"""

from __future__ import annotations

from typing import Any

import torch

from fedpress import wire
from fedpress.runtime.downlink import Catchup, Replicas
from fedpress.runtime.executor import Executor
from fedpress.runtime.turn import ClientReply, Turn, client_context, client_turns


class InProcessClients:
    """Every client in this process: the simulator's side of the wire."""

    def __init__(self, exp, store: dict[int, Any], executor: Executor, replicas: Replicas | None = None):
        self.exp, self.store, self.executor, self.replicas = exp, store, executor, replicas

    def _decode(self, downlinks: dict[int, bytes | Catchup | None]) -> dict[int, torch.Tensor | None]:
        decoded: dict[int, torch.Tensor] = {}  # a multicast is one bytes object: decoded once
        out = {}
        for c, data in downlinks.items():
            if isinstance(data, Catchup):  # the hidden-state downlink: the client's own x̂, caught up
                seed_model = self.exp.x0 if self.exp.downlink.seeded else None
                out[c] = self.replicas.receive(c, data, self.exp.wire, seed_model)
                continue
            if data is not None and id(data) not in decoded:
                decoded[id(data)] = wire.decode(data, self.exp.wire).expand(self.exp.wire)
            out[c] = None if data is None else decoded[id(data)]
        if self.replicas is not None:
            self.replicas.prune()
        return out

    def state(self, client: int) -> Any:
        state = self.store.get(client)  # one lookup (a disk store's is a query); None: never stored
        return self.exp.algorithm.init_client(self.exp.model.layout) if state is None else state

    def train(self, round_: int, downlinks: dict[int, bytes | Catchup | None]) -> dict[int, ClientReply]:
        received = self._decode(downlinks)
        turns = [Turn(c, self.state(c), received[c], round_) for c in downlinks]
        replies = {}
        for turn, (reply, new_state) in zip(turns, client_turns(self.exp, turns, self.executor), strict=True):
            replies[turn.client] = reply
            if new_state is not None:
                self.store[turn.client] = new_state
        return replies

    def reply(self, round_: int, clients: list[int], data: bytes) -> None:
        """The server's answer to the round's uploaders (Scaffnew's x_bar)."""
        x = wire.decode(data, self.exp.wire).expand(self.exp.wire)
        for c in clients:
            self.store[c] = self.exp.algorithm.client_reply(self.store[c], x, client_context(self.exp, round_, c))
