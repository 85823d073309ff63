"""One exception for everything that can be wrong with a message, with a named reason."""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why a message was refused. Each reason has its own test built from hand-written bytes."""

    TRUNCATED = "the message ends before its header or a section does"
    BAD_MAGIC = "the message does not start with the fedpress magic bytes"
    BAD_VERSION = "the wire format version is not one this decoder reads"
    BAD_CHECKSUM = "the CRC-32 trailer does not match the message (corrupted in transit)"
    UNKNOWN_KIND = "the selection, value or index-coding kind byte is not a known kind"
    BAD_RESERVED = "a reserved header byte is not zero"
    LAYOUT_MISMATCH = "the message was made for a different layout (dimension or fingerprint)"
    SECTION_COUNT = "the number of sections does not match the message kind"
    LENGTH_MISMATCH = "a section's length does not match what the header's counts imply"
    TRAILING_BYTES = "bytes are left over after the last section"
    COUNT_MISMATCH = "a count is inconsistent (more values than coordinates, wrong index count)"
    INDEX_OUT_OF_RANGE = "an index is not in [0, d)"
    INDEX_NOT_SORTED = "indices are not strictly increasing (unsorted or duplicated)"
    BAD_PADDING = "padding bits at the end of a bit stream are not zero"
    BAD_PARAMETER = "a codec parameter in the message is out of its allowed range"
    SYMBOL_OUT_OF_RANGE = "a quantized symbol lies outside the quantizer's alphabet"
    NON_FINITE = "a value, norm or scale is NaN or infinite"
    NOT_CANONICAL = "the message is valid but not coded as the encoder codes it (another index coding)"


class WireError(ValueError):
    """A message that cannot be encoded or decoded. `reason` says which rule it broke."""

    def __init__(self, reason: Reason, detail: str = ""):
        self.reason = reason
        self.detail = detail
        text = f"{reason.name}: {reason.value}"
        super().__init__(f"{text} ({detail})" if detail else text)


def require(ok: bool, reason: Reason, detail: str = "") -> None:
    """Raise WireError(reason) unless ok. Keeps the decoder's checks one line each."""
    if not ok:
        raise WireError(reason, detail)
