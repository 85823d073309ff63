"""Index coding: exact round trips, the smallest coding wins, and near log2 C(d, k)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpress.wire import Reason, WireError, decode_indices, encode_indices, index_method
from fedpress.wire.indexcode import BITMAP, ENUM, RAW32, RICE, _sizes


def random_set(d, k, seed=0):
    return np.sort(np.random.default_rng(seed).choice(d, k, replace=False)).astype(np.int64)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000).flatmap(lambda d: st.tuples(st.just(d), st.sets(st.integers(0, d - 1)))))
def test_round_trip_any_set(case):
    d, chosen = case
    idx = np.array(sorted(chosen), dtype=np.int64)
    section = encode_indices(idx, d)
    np.testing.assert_array_equal(decode_indices(section, d, idx.size), idx)


@pytest.mark.parametrize("d,k", [(1000, 0), (1000, 1), (1000, 10), (1000, 500), (1000, 1000), (10**6, 3)])
def test_picks_the_smallest_coding(d, k):
    idx = random_set(d, k)
    section = encode_indices(idx, d)
    assert len(section) - 1 == min(_sizes(idx, d).values())


def test_each_method_is_chosen_where_it_should_be():
    assert index_method(encode_indices(random_set(10**5, 10**5 // 2), 10**5)) == "bitmap"
    assert index_method(encode_indices(random_set(10**6, 10**4), 10**6)) == "rice"
    tiny = encode_indices(random_set(10**6, 5), 10**6)  # rice and enum may tie here
    assert len(tiny) - 1 == math.ceil((math.comb(10**6, 5) - 1).bit_length() / 8)
    assert index_method(encode_indices(np.zeros(0, dtype=np.int64), 10)) == "raw32"


@pytest.mark.parametrize("density", [1e-1, 1e-2, 1e-3])
def test_within_ten_percent_of_the_information_theoretic_minimum(density):
    d = 200_000
    k = int(d * density)
    minimum = math.lgamma(d + 1) / math.log(2) - (math.lgamma(k + 1) + math.lgamma(d - k + 1)) / math.log(2)
    bits = 8 * len(encode_indices(random_set(d, k), d))
    assert bits <= 1.10 * minimum


def test_enumerative_code_is_the_minimum_rounded_to_bytes():
    d, k = 10**6, 10
    idx = random_set(d, k)
    assert _sizes(idx, d)[(ENUM, 0)] == math.ceil(math.log2(math.comb(d, k)) / 8)
    assert len(encode_indices(idx, d)) - 1 <= math.ceil(math.log2(math.comb(d, k)) / 8)
    # here Rice ties with it (23 bytes) and the encoder breaks ties to the lower method:
    # the enumerative bytes of this set are not what the encoder writes
    assert index_method(encode_indices(idx, d)) == "rice"
    with pytest.raises(WireError) as e:
        decode_indices(bytes([ENUM]) + _enum_body(idx, d), d, k)
    assert e.value.reason is Reason.NOT_CANONICAL
    # nine neighbours and one far away: Rice pays for the long gap, the enumerative code does not
    clustered = np.array([*range(9), d - 1], dtype=np.int64)
    assert encode_indices(clustered, d) == bytes([ENUM]) + _enum_body(clustered, d)
    np.testing.assert_array_equal(decode_indices(bytes([ENUM]) + _enum_body(clustered, d), d, k), clustered)


def _enum_body(idx, d):
    rank = sum(math.comb(int(c), i + 1) for i, c in enumerate(idx.tolist()))
    return rank.to_bytes(math.ceil(math.log2(math.comb(d, idx.size)) / 8), "little")


def _tag(method, param=0):
    return bytes([method | (param << 3)])


@pytest.mark.parametrize(
    "section,d,k,reason",
    [
        (b"", 10, 0, Reason.TRUNCATED),
        (_tag(7), 10, 0, Reason.UNKNOWN_KIND),
        (_tag(RAW32) + np.array([3, 1], "<u4").tobytes(), 10, 2, Reason.INDEX_NOT_SORTED),
        (_tag(RAW32) + np.array([2, 2], "<u4").tobytes(), 10, 2, Reason.INDEX_NOT_SORTED),
        (_tag(RAW32) + np.array([1, 10], "<u4").tobytes(), 10, 2, Reason.INDEX_OUT_OF_RANGE),
        (_tag(RAW32) + np.array([1], "<u4").tobytes(), 10, 2, Reason.LENGTH_MISMATCH),
        (_tag(RAW32, 3), 10, 0, Reason.BAD_PARAMETER),
        (_tag(BITMAP) + bytes([0b11, 0]), 10, 3, Reason.COUNT_MISMATCH),
        (_tag(BITMAP) + bytes([0b11, 0b100]), 10, 2, Reason.BAD_PADDING),  # bit 10 is past d
        (_tag(BITMAP) + bytes([0b11]), 10, 2, Reason.LENGTH_MISMATCH),
        (_tag(RICE, 2) + bytes([0b1111]), 10, 2, Reason.COUNT_MISMATCH),  # remainders, then no unary
        (_tag(RICE, 0) + bytes([0b10000000]), 5, 1, Reason.INDEX_OUT_OF_RANGE),  # index 7 >= d = 5
        (_tag(ENUM) + bytes([255]), 10, 2, Reason.INDEX_OUT_OF_RANGE),  # rank 255 >= C(10,2) = 45
        (_tag(ENUM) + bytes([1, 0]), 10, 2, Reason.LENGTH_MISMATCH),
        (_tag(ENUM), 10**6, 65, Reason.BAD_PARAMETER),
        (_tag(RAW32), 3, 5, Reason.COUNT_MISMATCH),
    ],
)
def test_strict_decoding(section, d, k, reason):
    with pytest.raises(WireError) as e:
        decode_indices(section, d, k)
    assert e.value.reason is reason


def test_rice_gap_past_d_is_refused_before_any_overflow():
    # one index whose unary quotient alone (2**20 ones worth of zeros) runs far past d
    section = _tag(RICE, 31) + bytes(4) + bytes(2**17) + b"\x01"
    with pytest.raises(WireError) as e:
        decode_indices(section, 1000, 1)
    assert e.value.reason is Reason.INDEX_OUT_OF_RANGE


def _coded(idx: np.ndarray, d: int, method: int, param: int) -> bytes:
    """The set in the given coding, written from the table in docs/architecture.md."""
    if method == RAW32:
        body = idx.astype("<u4").tobytes()
    elif method == BITMAP:
        body = sum(1 << int(c) for c in idx).to_bytes((d + 7) // 8, "little")
    elif method == RICE:
        gaps = np.diff(idx, prepend=-1) - 1
        low = sum(int(g & ((1 << param) - 1)) << (param * i) for i, g in enumerate(gaps))
        ends = np.cumsum((gaps >> param) + 1) - 1
        unary = sum(1 << int(e) for e in ends)
        body = low.to_bytes((idx.size * param + 7) // 8, "little") + \
            (unary.to_bytes((int(ends[-1]) + 8) // 8, "little") if idx.size else b"")
    else:
        body = _enum_body(idx, d) if idx.size else b""
    return _tag(method, param) + body


@pytest.mark.parametrize("d,k", [(10, 0), (10, 1), (10, 3), (64, 64), (100, 7), (1000, 40), (1000, 300), (4096, 9)])
def test_the_decoder_accepts_only_the_coding_the_encoder_picks(d, k):
    """Every coding of the same set that decodes to it, and only the encoder's is accepted:
    bytes identify an index set."""
    idx = random_set(d, k, seed=d + k)
    canonical = encode_indices(idx, d)
    candidates = [(RAW32, 0), (BITMAP, 0), *((RICE, b) for b in range(32))] + ([(ENUM, 0)] if k <= 64 else [])
    accepted = []
    for method, param in candidates:
        section = _coded(idx, d, method, param)
        try:
            np.testing.assert_array_equal(decode_indices(section, d, k), idx)
            accepted.append(section)
        except WireError as e:
            assert e.reason is Reason.NOT_CANONICAL, (method, param, str(e))
    assert accepted == [canonical]
