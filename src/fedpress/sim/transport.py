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


def post(msg: Message, layout: Layout, ledger: Ledger, round_: int, direction: str, client: int,
         receivers: int = 1) -> bytes:
    """Encode and count: the bytes that leave the sender (WireError for what must not be
    sent: NaN, fp16 overflow)."""
    data = wire.encode(msg, layout)
    ledger.record(round_, direction, client, len(data), receivers)
    return data


def send(msg: Message, layout: Layout, ledger: Ledger, round_: int, direction: str, client: int,
         receivers: int = 1) -> Message:
    """One hop within a process: encode, count, and decode what the receiver gets."""
    return wire.decode(post(msg, layout, ledger, round_, direction, client, receivers), layout)


def dense_frame_bytes(layout: Layout) -> int:
    """The real length of one dense fp32 frame of the layout: the ledger's reference."""
    return len(wire.encode(Message(layout.numel, Dense(torch.zeros(layout.numel))), layout))
