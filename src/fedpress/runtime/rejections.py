"""Why an update was left out of a round or a server step, by name.

A rejection is either a `Rejection` (the runtime's reasons, below) or a wire `Reason` (the
strict decoder refused the bytes, or the client's encoder refused to send: `NON_FINITE`).
Every row tallies them (`rejected_reasons`, "TRUNCATED:1; NO_REPLY:2") and the summary
sums them (`rejections`).
"""

from __future__ import annotations

import enum
from collections import Counter

from fedpress.wire import Reason


class Rejection(enum.Enum):
    """The runtime's reasons for leaving an update out (the wire's are `wire.Reason`)."""

    NO_REPLY = "the client did not answer in time, or its node was lost"
    CLIENT_ERROR = "the client raised while it worked (Flower's error reply)"
    NON_FINITE_RESULT = "local training ended with NaN or infinite values: nothing was sent"
    VERSION_MISMATCH = "an asynchronous reply names a server version it was not sent"
    BAD_METRICS = "a reply without the ClientApp's metrics (loss, number of examples)"
    NO_UPDATE = "a reply that carries no update and does not say why"
    REFUSED = "the client refused to send, for a reason this server does not know"


Refusal = Rejection | Reason


def refusal(name: str) -> Refusal:
    """The reason a client named (it crosses a network as a string): a Rejection, a wire
    Reason, or REFUSED for a name this server does not know."""
    if name in Rejection.__members__:
        return Rejection[name]
    if name in Reason.__members__:
        return Reason[name]
    return Rejection.REFUSED


def tally(reasons: list[Refusal | str]) -> str:
    """Why the round's rejected updates were left out, "REASON:count; ..." in first-seen order."""
    names = [r.name if isinstance(r, enum.Enum) else str(r) for r in reasons]
    return "; ".join(f"{name}:{n}" for name, n in Counter(names).items())


def rejections(rows: list[dict]) -> dict[str, int]:
    """The rows' rejected_reasons summed over the run: {reason: count}."""
    total: Counter[str] = Counter()
    for row in rows:
        for item in filter(None, str(row.get("rejected_reasons", "")).split("; ")):
            reason, n = item.rsplit(":", 1)
            total[reason] += int(n)
    return dict(total)
