"""fedpress bytes inside Flower records: one `Array` with its own stype, nothing pickled.

Flower 1.41 carries an `Array(dtype, shape, stype, data: bytes)` as is; fedpress puts a
whole wire frame (or a state, see `fedpress.state.to_bytes`) in one such Array, so what
crosses Flower's transport is exactly the bytes the ledger counts, plus Flower's framing.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Array, ArrayRecord, Context

from fedpress import state as state_io

WIRE_STYPE = "fedpress/wire-v1"
STATE_STYPE = "fedpress/state-v1"
WIRE_KEY = "fedpress"  # the ArrayRecord of a message's wire frame
STATE_KEY = "fedpress-state"  # the ArrayRecord of a client's state in Context.state


class NotFedpress(ValueError):
    """A Flower record that does not hold what fedpress put there."""


def wire_array(data: bytes) -> Array:
    """One wire frame as one Flower Array of stype fedpress/wire-v1."""
    return Array(dtype="bytes", shape=(len(data),), stype=WIRE_STYPE, data=bytes(data))


def wire_record(data: bytes) -> ArrayRecord:
    return ArrayRecord({"frame": wire_array(data)})


def wire_bytes(record: ArrayRecord) -> bytes:
    array = record.get("frame") if isinstance(record, ArrayRecord) else None
    if array is None or array.stype != WIRE_STYPE:
        raise NotFedpress(f"expected one Array of stype {WIRE_STYPE!r} under 'frame'")
    return array.data


def save_state(context: Context, state: Any, key: str = STATE_KEY) -> None:
    """A client's algorithm state into Context.state, as state bytes (kept by the SuperNode)."""
    data = state_io.to_bytes(state)
    context.state[key] = ArrayRecord(
        {"state": Array(dtype="bytes", shape=(len(data),), stype=STATE_STYPE, data=data)})


def load_state(context: Context, key: str = STATE_KEY) -> tuple[bool, Any]:
    """(found, state): found is False when this node has no fedpress state yet."""
    if key not in context.state:
        return False, None
    array = context.state[key]["state"]
    if array.stype != STATE_STYPE:
        raise NotFedpress(f"Context.state[{key!r}] is not a fedpress state")
    return True, state_io.from_bytes(array.data)
