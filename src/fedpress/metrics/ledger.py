"""The ledger: the one place that adds up bytes.

Every message's `len(bytes)` is recorded here by the transport, and nowhere else is a
size computed. A broadcast is one entry with the number of clients that received it,
so both views exist: counted once (multicast, as QAFeL's spreadsheets count it) and
counted per receiving client (unicast, what each device downloads). Next to the real
bytes the ledger keeps the dense fp32 equivalent: the length of one fp32 frame of the
full model, measured once by encoding it, times the messages sent.

A third direction, JOIN, marks the first full download a client receives before it keeps
a state in sync from compressed broadcasts (QAFeL's x̂). It is a downlink and counts in
every downlink total; `initial_totals` shows it separately (spec §5.6.3: the authors did
not count it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

UP, DOWN = "up", "down"
JOIN = "join"  # a downlink: the first full state a client receives (asynchronous engine)
BROADCAST = -1  # the client id of a message sent to several clients at once


@dataclass
class Entry:
    round: int
    direction: str  # UP or DOWN
    client: int  # sender (UP) or receiver (DOWN); BROADCAST for one message to many
    nbytes: int
    receivers: int = 1


@dataclass
class Ledger:
    dense_bytes: int  # len() of one dense fp32 frame of the whole model
    entries: list[Entry] = field(default_factory=list)

    def record(self, round_: int, direction: str, client: int, nbytes: int, receivers: int = 1) -> None:
        """Called by the transport (`runtime.transport.Transport`) only: one message that crossed."""
        if direction not in (UP, DOWN, JOIN):
            raise ValueError(f"ledger direction must be {UP!r}, {DOWN!r} or {JOIN!r}, got {direction!r}")
        self.entries.append(Entry(round_, direction, client, int(nbytes), int(receivers)))

    def mark(self) -> int:
        """Where the ledger stands now, for `undo`."""
        return len(self.entries)

    def undo(self, mark: int) -> None:
        """Forget every entry recorded since `mark`: messages that were counted as they left
        but never crossed (a message the runtime could not deliver, a round that diverged)."""
        if not 0 <= mark <= len(self.entries):
            raise ValueError(f"ledger mark {mark} is not in [0, {len(self.entries)}]")
        del self.entries[mark:]

    def _of_round(self, round_: int) -> list[Entry]:
        """Entries of one round: they are appended in round order, so scan back from the end."""
        out = []
        for e in reversed(self.entries):
            if e.round == round_:
                out.append(e)
            elif e.round < round_:
                break
        return out

    def round_totals(self, round_: int) -> dict[str, int]:
        entries = self._of_round(round_)
        up = [e for e in entries if e.direction == UP]
        down = [e for e in entries if e.direction != UP]  # DOWN and JOIN
        return {
            "uplink_bytes": sum(e.nbytes for e in up),
            "downlink_bytes": sum(e.nbytes * e.receivers for e in down),
            "downlink_broadcast_bytes": sum(e.nbytes for e in down),
            "dense_uplink_bytes": self.dense_bytes * len(up),
            "dense_downlink_bytes": self.dense_bytes * sum(e.receivers for e in down),
        }

    def initial_totals(self, round_: int) -> dict[str, int]:
        """The JOIN part of the round's downlink: first downloads, per receiving client."""
        return {
            "initial_downlink_bytes": sum(e.nbytes * e.receivers for e in self._of_round(round_) if e.direction == JOIN)
        }

    def per_client(self) -> dict[int, dict[str, int]]:
        """Bytes each client sent and received (a broadcast counts for each of its receivers
        only when they are known; here it is listed under BROADCAST)."""
        out: dict[int, dict[str, int]] = {}
        for e in self.entries:
            row = out.setdefault(e.client, {"uplink_bytes": 0, "downlink_bytes": 0, "messages": 0})
            row["uplink_bytes" if e.direction == UP else "downlink_bytes"] += e.nbytes
            row["messages"] += 1
        return out

    def to_rows(self) -> list[list[int | str]]:
        """ledger.csv's rows: round, direction, client, bytes, receivers. The round is 1-based
        there, the metrics row the bytes are counted in (metrics.csv's `round`); the entries
        (and checkpoints) keep the 0-based round t."""
        return [[e.round + 1, e.direction, e.client, e.nbytes, e.receivers] for e in self.entries]

    @classmethod
    def from_rows(cls, dense_bytes: int, rows: list) -> Ledger:
        """The ledger of ledger.csv's rows (`to_rows`: 1-based rounds)."""
        return cls(int(dense_bytes), [Entry(int(r) - 1, str(d), int(c), int(n), int(k)) for r, d, c, n, k in rows])
