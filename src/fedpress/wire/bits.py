"""Bit streams: fixed-width packing, unary and Elias-gamma codes, all vectorized with numpy.

Convention (docs/architecture.md, "Bit streams"): bit i of a stream is bit (i mod 8) of
byte i // 8, least significant bit first, and every value is written least significant
bit first. A stream is padded with zero bits to a whole byte; decoders check that the
padding is zero and that the stream is exactly as long as its contents need.

Variable-length codes (unary, Elias-gamma) are written as *split streams*: the unary
prefixes of all values in one stream and their binary parts in another. The total size
is the same as interleaving them, but decoding is vectorized: the positions of the 1
bits of the prefix stream give every length at once, so no decoder walks bit by bit.
"""

from __future__ import annotations

import numpy as np

from fedpress.wire.errors import Reason, WireError, require

_LE_U64 = np.dtype("<u8")


def nbytes_for(bits: int) -> int:
    return (int(bits) + 7) // 8


def _check_padding(data: np.ndarray, used_bits: int) -> None:
    """The bits after `used_bits` in the last byte must be zero."""
    rem = used_bits % 8
    if rem and data.size:
        require(int(data[-1]) >> rem == 0, Reason.BAD_PADDING, f"non-zero bits after bit {used_bits}")


# ---------------------------------------------------------------------------- fixed width


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Pack n unsigned integers of `width` bits each (width 0..64) into ceil(n*width/8) bytes."""
    v = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    n = v.size
    if n == 0 or width == 0:
        return b""
    if width <= 8:
        # Fast path: 8 values of w bits make exactly w bytes. Build one 64-bit word per
        # group of 8 and keep its first w little-endian bytes.
        groups = -(-n // 8)
        padded = np.zeros(groups * 8, dtype=np.uint64)
        padded[:n] = v
        padded = padded.reshape(groups, 8)
        word = np.zeros(groups, dtype=np.uint64)
        for j in range(8):
            word |= padded[:, j] << np.uint64(width * j)
        out = word.astype(_LE_U64).view(np.uint8).reshape(groups, 8)[:, :width]
        return out.tobytes()[: nbytes_for(n * width)]
    shifts = np.arange(width, dtype=np.uint64)
    bits = ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)  # (n, width)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def unpack_fixed(buf: bytes | memoryview, n: int, width: int) -> np.ndarray:
    """Inverse of pack_fixed. `buf` must be exactly ceil(n*width/8) bytes. Returns uint64 (n,)."""
    data = np.frombuffer(buf, dtype=np.uint8)
    expected = nbytes_for(n * width)
    require(data.size == expected, Reason.LENGTH_MISMATCH,
            f"{n} values of {width} bits need {expected} bytes, got {data.size}")
    if n == 0 or width == 0:
        return np.zeros(n, dtype=np.uint64)
    _check_padding(data, n * width)
    if width <= 8:
        groups = -(-n // 8)
        full = np.zeros(groups * width, dtype=np.uint8)
        full[: data.size] = data
        arr = np.zeros((groups, 8), dtype=np.uint8)
        arr[:, :width] = full.reshape(groups, width)
        word = arr.view(_LE_U64).ravel()  # (groups,)
        shifts = np.uint64(width) * np.arange(8, dtype=np.uint64)
        mask = np.uint64((1 << width) - 1)
        return ((word[:, None] >> shifts) & mask).ravel()[:n]
    bits = np.unpackbits(data, bitorder="little")[: n * width].reshape(n, width)
    return (bits.astype(np.uint64) << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


# ---------------------------------------------------------------------------- variable width


def pack_varwidth(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Pack value i in widths[i] bits (widths <= 52), back to back."""
    v = np.asarray(values, dtype=np.uint64)
    w = np.asarray(widths, dtype=np.int64)
    total = int(w.sum())
    if total == 0:
        return b""
    owner = np.repeat(np.arange(v.size), w)                      # (total,) which value a bit is of
    j = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(w) - w, w)  # bit position inside it
    bits = ((v[owner] >> j.astype(np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits, bitorder="little").tobytes()


def unpack_varwidth(buf: bytes | memoryview, widths: np.ndarray) -> np.ndarray:
    """Inverse of pack_varwidth. `buf` must be exactly ceil(sum(widths)/8) bytes."""
    data = np.frombuffer(buf, dtype=np.uint8)
    w = np.asarray(widths, dtype=np.int64)
    total = int(w.sum())
    require(data.size == nbytes_for(total), Reason.LENGTH_MISMATCH,
            f"variable-width stream of {total} bits needs {nbytes_for(total)} bytes, got {data.size}")
    if total == 0:
        return np.zeros(w.size, dtype=np.uint64)
    _check_padding(data, total)
    bits = np.unpackbits(data, bitorder="little")[:total]
    owner = np.repeat(np.arange(w.size), w)
    j = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(w) - w, w)
    # Widths are <= 52, so the float64 sums below are exact integers.
    vals = np.bincount(owner, weights=bits * np.exp2(j), minlength=w.size)
    return vals.astype(np.uint64)


# ---------------------------------------------------------------------------- unary


def pack_unary(q: np.ndarray) -> bytes:
    """Each q_i >= 0 as q_i zero bits then a one bit."""
    q = np.asarray(q, dtype=np.int64)
    if q.size == 0:
        return b""
    ends = np.cumsum(q + 1) - 1  # position of each terminating 1
    bits = np.zeros(int(ends[-1]) + 1, dtype=np.uint8)
    bits[ends] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def unpack_unary(buf: bytes | memoryview, n: int) -> np.ndarray:
    """Inverse of pack_unary: exactly n terminators, nothing but zero padding after the last."""
    data = np.frombuffer(buf, dtype=np.uint8)
    if n == 0:
        require(data.size == 0, Reason.LENGTH_MISMATCH, f"empty unary stream has {data.size} bytes")
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(np.unpackbits(data, bitorder="little"))
    require(ends.size == n, Reason.COUNT_MISMATCH, f"unary stream holds {ends.size} codes, expected {n}")
    require(nbytes_for(int(ends[-1]) + 1) == data.size, Reason.BAD_PADDING,
            "unary stream has whole bytes of padding after its last code")
    return np.diff(ends, prepend=-1) - 1


# ---------------------------------------------------------------------------- Elias gamma


def bit_length(v: np.ndarray) -> np.ndarray:
    """floor(log2 v) + 1 for v >= 1 (uint64), exact (no float rounding at powers of two)."""
    v = np.asarray(v, dtype=np.uint64)
    n = np.floor(np.log2(np.maximum(v, 1).astype(np.float64))).astype(np.int64)
    n -= (np.left_shift(np.uint64(1), n.astype(np.uint64)) > v).astype(np.int64)
    n += (np.left_shift(np.uint64(1), (n + 1).astype(np.uint64)) <= v).astype(np.int64)
    return n + 1


def gamma_encode(v: np.ndarray) -> tuple[bytes, bytes]:
    """Elias-gamma code of positive integers as (prefix stream, mantissa stream).

    gamma(v) is N zeros, a one, then the N low bits of v, with N = floor(log2 v):
    2N + 1 bits in all, the count the QSGD paper uses.
    """
    v = np.asarray(v, dtype=np.uint64)
    if v.size and int(v.min()) < 1:
        raise ValueError("Elias-gamma codes positive integers only")
    n = bit_length(v) - 1
    mantissa = v - np.left_shift(np.uint64(1), n.astype(np.uint64))
    return pack_unary(n), pack_varwidth(mantissa, n)


def gamma_decode(prefix: bytes | memoryview, mantissa: bytes | memoryview, count: int) -> np.ndarray:
    n = unpack_unary(prefix, count)
    require(n.size == 0 or int(n.max()) <= 52, Reason.BAD_PARAMETER, "Elias-gamma code longer than 105 bits")
    low = unpack_varwidth(mantissa, n)
    return np.left_shift(np.uint64(1), n.astype(np.uint64)) + low


__all__ = [
    "WireError",
    "bit_length",
    "gamma_decode",
    "gamma_encode",
    "nbytes_for",
    "pack_fixed",
    "pack_unary",
    "pack_varwidth",
    "unpack_fixed",
    "unpack_unary",
    "unpack_varwidth",
]
