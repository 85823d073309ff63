"""The server's acceptance of an upload, written once for every runtime.

Whatever carried it (a function call, a Flower message), an upload that reaches the
server is handled here: the bytes that crossed are counted (used or not), a reply that
says it carries nothing is refused by its reason, an asynchronous reply must name the
version it was sent, the frame is decoded strictly, and what passes becomes an `Uplink`
with its staleness. Anything else is a named refusal, never an aggregated update.
"""

from __future__ import annotations

import sys

from fedpress.algorithms import Uplink
from fedpress.metrics.ledger import UP
from fedpress.runtime.rejections import Refusal, Rejection, refusal
from fedpress.runtime.transport import Transport
from fedpress.runtime.turn import ClientReply
from fedpress.wire import WireError


def accept(transport: Transport, round_: int, client: int, reply: ClientReply | None, *,
           sent_version: int | None = None, server_version: int | None = None,
           step: str = "round") -> Uplink | Refusal:
    """Client `client`'s reply in round (or server step) `round_`: an Uplink, or why not.

    `sent_version` (asynchronous runtimes): the server version the start was sent; the
    reply must carry the same, and its staleness is `server_version - sent_version`.
    `step` names the unit in the message printed for a frame the decoder refused."""
    if reply is None:
        return Rejection.NO_REPLY  # lost: the node failed or the round timed out
    if reply.data is not None:  # what crossed is counted, used or not
        transport.count(reply.data, round_, UP, client)
    if reply.refused:
        return refusal(reply.refused)  # refused at the client (diverged, fp16 overflow), or bad
    if reply.data is None:
        return Rejection.NO_UPDATE
    if sent_version is not None and reply.version != sent_version:
        return Rejection.VERSION_MISMATCH  # the staleness must come from the version the start was sent
    try:
        message = transport.decode(reply.data)
    except WireError as e:  # corrupt or foreign bytes: counted, never aggregated
        print(f"fedpress: {step} {round_ + 1}: client {client}'s update rejected: {e}", file=sys.stderr)
        return e.reason
    staleness = 0 if sent_version is None else server_version - sent_version
    return Uplink(client, message, float(reply.num_samples), staleness)
