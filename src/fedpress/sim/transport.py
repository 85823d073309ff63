"""The transport: the only way a value reaches a receiver (DESIGN rule 1).

A message is encoded to bytes, `len(bytes)` goes into the ledger, and the receiver gets
what it decodes from those bytes, never the sender's objects.
"""

from __future__ import annotations

import torch

from fedpress import wire
from fedpress.layout import Layout
from fedpress.metrics.ledger import Ledger
from fedpress.wire.message import Dense, Message


def send(msg: Message, layout: Layout, ledger: Ledger, round_: int, direction: str, client: int,
         receivers: int = 1) -> Message:
    data = wire.encode(msg, layout)  # raises WireError for what must not be sent (NaN, overflow)
    ledger.record(round_, direction, client, len(data), receivers)
    return wire.decode(data, layout)


def dense_frame_bytes(layout: Layout) -> int:
    """The real length of one dense fp32 frame of the layout: the ledger's reference."""
    return len(wire.encode(Message(layout.numel, Dense(torch.zeros(layout.numel))), layout))
