"""Index sets: which k of d coordinates a sparse message carries, in as few bits as possible.

The encoder computes the exact size of four codings and writes the smallest, behind a
one-byte tag (low 3 bits: the method; high 5 bits: its parameter); ties go to the smaller
(method, parameter). The decoder accepts only that coding (NOT_CANONICAL otherwise), so
the bytes of an index set are a function of the set:

  RAW32   k little-endian uint32                                  4k bytes
  BITMAP  d bits, bit j set when coordinate j is kept             ceil(d/8) bytes
  RICE    gaps g_i = c_i - c_{i-1} - 1 (c_{-1} = -1), Golomb-Rice with parameter b:
          k remainders of b bits (fixed width), then the k quotients g_i >> b in unary.
  ENUM    the rank of the set in the combinatorial number system,
          sum_i C(c_i, i + 1), in ceil(log2 C(d, k)) bits; only for k <= ENUM_MAX_K.

Rice is within a few percent of log2 C(d, k) at every density from 1e-1 down; the
enumerative code *is* log2 C(d, k) (rounded up to a byte) and wins when k is tiny, where
a byte of overhead is a large share (density 1e-5 of a million coordinates is k = 10).
"""

from __future__ import annotations

import math

import numpy as np

from fedpress.wire.bits import nbytes_for, pack_fixed, pack_unary, unpack_fixed, unpack_unary
from fedpress.wire.errors import Reason, WireError, require

RAW32, BITMAP, RICE, ENUM = 0, 1, 2, 3
METHOD_NAMES = {RAW32: "raw32", BITMAP: "bitmap", RICE: "rice", ENUM: "enum"}
ENUM_MAX_K = 64  # Python big-int ranking costs O(k^2 log d); beyond this Rice is as good


def _rice_size(gaps: np.ndarray, b: int) -> int:
    k = gaps.size
    return nbytes_for(k * b) + nbytes_for(int((gaps >> b).sum()) + k)


def _enum_bytes(d: int, k: int) -> int:
    return nbytes_for((math.comb(d, k) - 1).bit_length())


def _sizes(idx: np.ndarray, d: int) -> dict[tuple[int, int], int]:
    """Exact body size in bytes of every candidate coding, keyed by (method, parameter)."""
    k = idx.size
    sizes = {(RAW32, 0): 4 * k, (BITMAP, 0): nbytes_for(d)}
    if k:
        gaps = np.diff(idx, prepend=-1) - 1
        mean_gap = max(float(gaps.mean()), 1.0)
        centre = int(math.log2(mean_gap))
        for b in range(max(0, centre - 3), min(31, centre + 3) + 1):
            sizes[(RICE, b)] = _rice_size(gaps, b)
    if k <= ENUM_MAX_K:
        sizes[(ENUM, 0)] = _enum_bytes(d, k)
    return sizes


def _smallest(sizes: dict[tuple[int, int], int]) -> tuple[int, int]:
    """The (method, parameter) the encoder writes: the smallest body, ties to the smaller
    (method, parameter). Deterministic, so the decoder can hold a frame to it."""
    return min(sizes, key=lambda key: (sizes[key], key))


def encode_indices(idx: np.ndarray, d: int) -> bytes:
    """Tag byte + body for a strictly increasing int64 array of coordinates in [0, d)."""
    idx = np.asarray(idx, dtype=np.int64)
    method, param = _smallest(_sizes(idx, d))
    tag = bytes([method | (param << 3)])
    if method == RAW32:
        return tag + idx.astype("<u4").tobytes()
    if method == BITMAP:
        mask = np.zeros(d, dtype=np.uint8)
        mask[idx] = 1
        return tag + np.packbits(mask, bitorder="little").tobytes()
    if method == RICE:
        gaps = np.diff(idx, prepend=-1) - 1
        low = gaps & ((1 << param) - 1)
        return tag + pack_fixed(low, param) + pack_unary(gaps >> param)
    rank = sum(math.comb(int(c), i + 1) for i, c in enumerate(idx.tolist()))
    return tag + rank.to_bytes(_enum_bytes(d, idx.size), "little")


def index_method(section: bytes) -> str:
    """Name of the coding a section used (for reports and benchmarks)."""
    return METHOD_NAMES.get(section[0] & 7, "unknown") if section else "empty"


def decode_indices(section: bytes | memoryview, d: int, k: int) -> np.ndarray:
    """Strict inverse of encode_indices: k strictly increasing int64 coordinates in [0, d),
    coded exactly as encode_indices codes them (else NOT_CANONICAL).

    Cost: every length and count check comes before the work, which is then bounded by
    the section's length (a bitmap section is d/8 bytes long)."""
    section = memoryview(section)
    require(len(section) >= 1, Reason.TRUNCATED, "index section has no tag byte")
    require(k <= d, Reason.COUNT_MISMATCH, f"{k} indices cannot fit in {d} coordinates")
    method, param = section[0] & 7, section[0] >> 3
    idx = _decode_body(method, param, section[1:], d, k)
    sizes = _sizes(idx, d)  # O(k), as the decoding was
    chosen = _smallest(sizes)
    if chosen != (method, param):
        raise WireError(Reason.NOT_CANONICAL, f"{k} of {d} indices coded {METHOD_NAMES[method]}({param}) in "
                        f"{len(section) - 1} bytes; the encoder writes {METHOD_NAMES[chosen[0]]}({chosen[1]}) "
                        f"in {sizes[chosen]}")
    return idx


def _decode_body(method: int, param: int, body: memoryview, d: int, k: int) -> np.ndarray:
    if method == RAW32:
        require(param == 0, Reason.BAD_PARAMETER, "raw32 index coding takes no parameter")
        require(len(body) == 4 * k, Reason.LENGTH_MISMATCH, f"raw32: {k} indices need {4 * k} bytes, got {len(body)}")
        idx = np.frombuffer(body, dtype="<u4").astype(np.int64)
        _check_sorted_in_range(idx, d)
        return idx
    if method == BITMAP:
        require(param == 0, Reason.BAD_PARAMETER, "bitmap index coding takes no parameter")
        require(len(body) == nbytes_for(d), Reason.LENGTH_MISMATCH,
                f"bitmap of {d} coordinates needs {nbytes_for(d)} bytes, got {len(body)}")
        bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8), bitorder="little")
        require(not bits[d:].any(), Reason.BAD_PADDING, "bitmap has bits set past coordinate d")
        idx = np.flatnonzero(bits[:d]).astype(np.int64)
        require(idx.size == k, Reason.COUNT_MISMATCH, f"bitmap marks {idx.size} coordinates, header says {k}")
        return idx
    if method == RICE:
        low_len = nbytes_for(k * param)
        require(len(body) >= low_len, Reason.LENGTH_MISMATCH,
                f"rice: {k} remainders of {param} bits need {low_len} bytes, section has {len(body)}")
        high = unpack_unary(body[low_len:], k)
        # Every gap is at least high << b, and the gaps add up to less than d: check before
        # shifting so that a hostile message cannot overflow int64.
        require(int(high.sum()) <= (d >> param), Reason.INDEX_OUT_OF_RANGE, "rice gaps run past d")
        gaps = (high << param) | unpack_fixed(body[:low_len], k, param).astype(np.int64)
        idx = np.cumsum(gaps + 1) - 1
        require(k == 0 or int(idx[-1]) < d, Reason.INDEX_OUT_OF_RANGE, f"rice index {idx[-1] if k else 0} >= d = {d}")
        return idx
    if method == ENUM:
        require(param == 0, Reason.BAD_PARAMETER, "enumerative index coding takes no parameter")
        require(k <= ENUM_MAX_K, Reason.BAD_PARAMETER, f"enumerative coding allows k <= {ENUM_MAX_K}, got {k}")
        need = _enum_bytes(d, k)
        require(len(body) == need, Reason.LENGTH_MISMATCH, f"enum: C({d},{k}) needs {need} bytes, got {len(body)}")
        rank = int.from_bytes(body, "little")
        require(rank < math.comb(d, k), Reason.INDEX_OUT_OF_RANGE, "enumerative rank >= C(d, k)")
        return _unrank(rank, d, k)
    raise WireError(Reason.UNKNOWN_KIND, f"index coding method {method}")


def _unrank(rank: int, d: int, k: int) -> np.ndarray:
    """Greedy inverse of the combinatorial number system: largest c with C(c, i) <= rank."""
    out = [0] * k
    hi = d - 1
    for i in range(k, 0, -1):
        lo = i - 1
        while lo < hi:  # largest c in [lo, hi] with comb(c, i) <= rank
            mid = (lo + hi + 1) // 2
            if math.comb(mid, i) <= rank:
                lo = mid
            else:
                hi = mid - 1
        out[i - 1] = lo
        rank -= math.comb(lo, i)
        hi = lo - 1
    return np.asarray(out, dtype=np.int64)


def _check_sorted_in_range(idx: np.ndarray, d: int) -> None:
    if idx.size == 0:
        return
    require(int(idx.max()) < d, Reason.INDEX_OUT_OF_RANGE, f"index {int(idx.max())} >= d = {d}")
    require(bool((np.diff(idx) > 0).all()), Reason.INDEX_NOT_SORTED, "indices must be strictly increasing")
