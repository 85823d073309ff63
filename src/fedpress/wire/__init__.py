"""fedpress.wire: typed payloads and their exact, strictly checked bytes.

    msg = Message(d, Dense(x.half()))          # what a codec means to send
    data = wire.encode(msg, layout)            # bytes; len(data) is what the ledger counts
    same = wire.decode(data, layout)           # WireError(reason) on anything malformed
"""

from fedpress.wire.errors import Reason, WireError
from fedpress.wire.frame import HEADER, decode, encode, section_lengths
from fedpress.wire.indexcode import decode_indices, encode_indices, index_method
from fedpress.wire.message import QSGD, Affine, Dense, Message, seeded_indices, value_layout

__all__ = [
    "QSGD",
    "Affine",
    "Dense",
    "Message",
    "Reason",
    "WireError",
    "HEADER",
    "decode",
    "decode_indices",
    "encode",
    "encode_indices",
    "index_method",
    "section_lengths",
    "seeded_indices",
    "value_layout",
]
