"""The runtime core's contract: one transport that counts, one acceptance, named refusals,
no runtime that probes an algorithm, and no import cycle in the Flower package."""

import ast
from pathlib import Path

import pytest
import torch

from fedpress.algorithms import Uplink
from fedpress.layout import Layout
from fedpress.metrics.ledger import DOWN, UP, Ledger
from fedpress.runtime.accept import accept
from fedpress.runtime.rejections import Rejection, refusal, tally
from fedpress.runtime.transport import Transport, dense_frame_bytes
from fedpress.runtime.turn import ClientReply
from fedpress.wire import Dense, Message, Reason, encode

SRC = Path(__import__("fedpress").__file__).parent
LAYOUT = Layout.from_shapes([("w", (3, 4)), ("b", (4,))])


def frame(value: float = 1.0) -> bytes:
    return encode(Message(LAYOUT.numel, Dense(torch.full((LAYOUT.numel,), value))), LAYOUT)


def calls(path: Path, name: str) -> int:
    """How many calls to `name` (a plain name or an attribute) the module makes."""
    tree = ast.parse(path.read_text())
    return sum(1 for n in ast.walk(tree) if isinstance(n, ast.Call)
               and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name))


# ---------------------------------------------------------------------------- structure


def test_no_runtime_asks_an_algorithm_what_it_has():
    for package in ("sim", "flower", "runtime"):
        for path in (SRC / package).glob("*.py"):
            assert calls(path, "hasattr") == 0, path


def test_the_transport_is_the_only_caller_of_ledger_record():
    callers = {path.relative_to(SRC).as_posix() for path in SRC.rglob("*.py") if calls(path, "record")}
    assert callers == {"runtime/transport.py"}


def test_every_runtime_calls_the_one_client_turn_and_the_one_acceptance():
    # the simulator's fleet, the virtual clock, and the Flower ClientApp (both its handlers share turn_of)
    assert all(calls(SRC / m, "client_turns") == 1 for m in ("sim/clients.py", "sim/asynchronous.py",
                                                              "flower/client.py"))
    # the synchronous loop (the simulator's and Flower's rounds), the virtual clock, Flower's async loop
    assert all(calls(SRC / m, "accept") == 1 for m in ("sim/rounds.py", "sim/asynchronous.py",
                                                        "flower/asynchronous.py"))
    assert calls(SRC / "flower/client.py", "turn_of") == 2


def test_the_flower_package_has_no_import_cycle():
    edges = {}
    for path in (SRC / "flower").glob("*.py"):
        tree = ast.parse(path.read_text())
        edges[path.stem] = {n.module.rsplit(".", 1)[1] for n in ast.walk(tree)
                            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("fedpress.flower.")}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in edges.get(start, ()))

    assert not [m for m in edges if reaches(m, m)]


# ---------------------------------------------------------------------------- ledger and transport


def test_ledger_undo_forgets_exactly_what_came_after_the_mark():
    ledger = Ledger(100)
    ledger.record(0, UP, 1, 10)
    mark = ledger.mark()
    ledger.record(0, DOWN, 2, 20)
    ledger.record(1, UP, 3, 30)
    ledger.undo(mark)
    assert [(e.client, e.nbytes) for e in ledger.entries] == [(1, 10)]
    with pytest.raises(ValueError, match="mark 5"):
        ledger.undo(5)


def test_transport_counts_what_it_posts_and_what_arrives():
    ledger = Ledger(dense_frame_bytes(LAYOUT))
    transport = Transport(ledger, LAYOUT)
    msg = Message(LAYOUT.numel, Dense(torch.arange(LAYOUT.numel, dtype=torch.float32)))
    got = transport.send(msg, 0, DOWN, 4)
    assert torch.equal(got.expand(LAYOUT), msg.expand(LAYOUT))
    data = frame()
    transport.count(data, 0, UP, 4)
    assert [(e.direction, e.nbytes) for e in ledger.entries] == [(DOWN, len(data)), (UP, len(data))]
    mark = transport.mark()
    transport.post(msg, 1, DOWN, 5)
    transport.undo(mark)
    assert len(ledger.entries) == 2


# ---------------------------------------------------------------------------- acceptance


def accepted(reply, **kw):
    ledger = Ledger(dense_frame_bytes(LAYOUT))
    return accept(Transport(ledger, LAYOUT), 3, 7, reply, **kw), ledger


def test_an_upload_that_decodes_becomes_an_uplink_with_its_weight_and_staleness():
    got, ledger = accepted(ClientReply(frame(2.0), 0.5, 40, "", 1), sent_version=1, server_version=3)
    assert isinstance(got, Uplink) and got.client == 7 and got.weight == 40.0 and got.staleness == 2
    assert torch.equal(got.message.expand(LAYOUT), torch.full((LAYOUT.numel,), 2.0))
    assert [(e.round, e.direction, e.client, e.nbytes) for e in ledger.entries] == [(3, UP, 7, len(frame()))]


@pytest.mark.parametrize("reply, reason, counted", [
    (None, Rejection.NO_REPLY, False),
    (ClientReply(None, 0.1, 5, "NON_FINITE_RESULT"), Rejection.NON_FINITE_RESULT, False),
    (ClientReply(None, 0.1, 5, "NON_FINITE"), Reason.NON_FINITE, False),  # the encoder refused (fp16 overflow)
    (ClientReply(None, 0.1, 5, "SOMETHING_ELSE"), Rejection.REFUSED, False),
    (ClientReply(None, 0.1, 5), Rejection.NO_UPDATE, False),
    (ClientReply(frame(), 0.1, 5, "BAD_METRICS"), Rejection.BAD_METRICS, True),
    (ClientReply(frame()[:-3], 0.1, 5), Reason.TRUNCATED, True),
    (ClientReply(b"not a frame at all", 0.1, 5), Reason.BAD_MAGIC, True),
])
def test_every_refusal_is_named_and_what_crossed_is_counted(reply, reason, counted):
    got, ledger = accepted(reply)
    assert got is reason
    assert len(ledger.entries) == int(counted)


def test_a_reply_naming_another_version_is_refused_with_its_bytes_counted():
    got, ledger = accepted(ClientReply(frame(), 0.1, 5, "", 4), sent_version=2, server_version=3)
    assert got is Rejection.VERSION_MISMATCH and len(ledger.entries) == 1


def test_refusal_names_and_tally():
    assert refusal("NO_REPLY") is Rejection.NO_REPLY and refusal("LAYOUT_MISMATCH") is Reason.LAYOUT_MISMATCH
    assert tally([Rejection.NO_REPLY, Reason.TRUNCATED, Rejection.NO_REPLY]) == "NO_REPLY:2; TRUNCATED:1"
    # one name space: no runtime reason shadows a wire reason
    assert not set(Rejection.__members__) & set(Reason.__members__)
