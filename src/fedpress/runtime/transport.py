"""The transport: the only way a value reaches a receiver, and the only place bytes are
counted (DESIGN rule 1).

A message is encoded to bytes, `len(bytes)` goes into the ledger, and the receiver gets
what it decodes from those bytes, never the sender's objects. A runtime that carries the
bytes itself (Flower) posts them here and hands what arrives back here: whatever the
path, every byte that crosses is recorded by this class and by nothing else.
"""

from __future__ import annotations

import torch

from fedpress import wire
from fedpress.layout import Layout
from fedpress.metrics.ledger import Ledger
from fedpress.wire.message import Dense, Message


class Transport:
    """Encode, count, decode: over one ledger, for messages laid out by `layout`."""

    def __init__(self, ledger: Ledger, layout: Layout):
        self.ledger, self.layout = ledger, layout

    def post(self, msg: Message, round_: int, direction: str, client: int, receivers: int = 1) -> bytes:
        """Encode and count: the bytes that leave the sender (WireError for what must not be
        sent: NaN, fp16 overflow)."""
        return self.count(wire.encode(msg, self.layout), round_, direction, client, receivers)

    def count(self, data: bytes, round_: int, direction: str, client: int, receivers: int = 1) -> bytes:
        """Count bytes that crossed as they are: an upload that arrived (used or not), or a
        frame encoded once and sent again (QAFeL's missed broadcasts)."""
        self.ledger.record(round_, direction, client, len(data), receivers)
        return data

    def decode(self, data: bytes) -> Message:
        """What the receiver gets from bytes that crossed (counted already): WireError for
        anything that is not a valid frame of this layout."""
        return wire.decode(data, self.layout)

    def send(self, msg: Message, round_: int, direction: str, client: int, receivers: int = 1) -> Message:
        """One hop within a process: encode, count, and decode what the receiver gets."""
        return self.decode(self.post(msg, round_, direction, client, receivers))

    def mark(self) -> int:
        return self.ledger.mark()

    def undo(self, mark: int) -> None:
        """Uncount what was posted since `mark`: it never crossed (see Ledger.undo)."""
        self.ledger.undo(mark)


def dense_frame_bytes(layout: Layout) -> int:
    """The real length of one dense fp32 frame of the layout: the ledger's reference."""
    return len(wire.encode(Message(layout.numel, Dense(torch.zeros(layout.numel))), layout))
