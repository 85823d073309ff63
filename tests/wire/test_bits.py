"""Bit streams: the documented bit order, exact round trips, strict lengths and padding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpress.wire import Reason, WireError
from fedpress.wire.bits import (
    bit_length,
    gamma_decode,
    gamma_encode,
    pack_fixed,
    pack_unary,
    pack_varwidth,
    unpack_fixed,
    unpack_unary,
    unpack_varwidth,
)


def test_bit_order_is_lsb_first_as_documented():
    # 1, 2, 3 in 2 bits each, least significant bit first: stream 10 01 11 -> 0b00111001
    assert pack_fixed(np.array([1, 2, 3]), 2) == bytes([0b00111001])
    # unary 0, 2: "1" then "001" -> bits 1,0,0,1 -> 0b1001
    assert pack_unary(np.array([0, 2])) == bytes([0b1001])


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 40), st.lists(st.integers(0, 2**40), max_size=60))
def test_fixed_width_round_trip(width, values):
    v = np.array(values, dtype=np.uint64) & np.uint64((1 << width) - 1)
    buf = pack_fixed(v, width)
    assert len(buf) == (v.size * width + 7) // 8
    np.testing.assert_array_equal(unpack_fixed(buf, v.size, width), v)


def test_fixed_width_fast_path_matches_generic_on_large_input():
    rng = np.random.default_rng(0)
    for width in range(1, 9):
        v = rng.integers(0, 1 << width, size=100_003).astype(np.uint64)
        buf = pack_fixed(v, width)
        # the generic bit-matrix path, written out independently
        bits = ((v[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
        assert buf == np.packbits(bits.ravel(), bitorder="little").tobytes()
        np.testing.assert_array_equal(unpack_fixed(buf, v.size, width), v)


def test_fixed_width_rejects_wrong_length_and_dirty_padding():
    buf = pack_fixed(np.array([1, 2, 3]), 3)  # 9 bits -> 2 bytes
    with pytest.raises(WireError) as e:
        unpack_fixed(buf + b"\x00", 3, 3)
    assert e.value.reason is Reason.LENGTH_MISMATCH
    with pytest.raises(WireError) as e:
        unpack_fixed(buf[:1] + bytes([buf[1] | 0x80]), 3, 3)
    assert e.value.reason is Reason.BAD_PADDING


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=50))
def test_unary_round_trip(q):
    q = np.array(q, dtype=np.int64)
    np.testing.assert_array_equal(unpack_unary(pack_unary(q), q.size), q)


def test_unary_is_strict():
    buf = pack_unary(np.array([3, 1]))
    with pytest.raises(WireError) as e:
        unpack_unary(buf, 3)
    assert e.value.reason is Reason.COUNT_MISMATCH
    with pytest.raises(WireError) as e:
        unpack_unary(buf + b"\x00", 2)
    assert e.value.reason is Reason.BAD_PADDING


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 40)), max_size=50))
def test_varwidth_round_trip(pairs):
    widths = np.array([w for _, w in pairs], dtype=np.int64)
    values = np.array([v & ((1 << w) - 1) for v, w in pairs], dtype=np.uint64)
    np.testing.assert_array_equal(unpack_varwidth(pack_varwidth(values, widths), widths), values)


def test_bit_length_is_exact_at_powers_of_two():
    v = np.array([1, 2, 3, 4, 7, 8, 2**31 - 1, 2**31, 2**40, 2**40 + 1], dtype=np.uint64)
    np.testing.assert_array_equal(bit_length(v), [int(x).bit_length() for x in v.tolist()])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 2**40), max_size=50))
def test_gamma_round_trip_and_paper_length(values):
    v = np.array(values, dtype=np.uint64)
    prefix, mantissa = gamma_encode(v)
    np.testing.assert_array_equal(gamma_decode(prefix, mantissa, v.size), v)
    # Elias-gamma spends 2 floor(log2 v) + 1 bits; split streams pad each to a byte.
    total_bits = sum(2 * (int(x).bit_length() - 1) + 1 for x in values)
    assert len(prefix) + len(mantissa) <= (total_bits + 7) // 8 + 1
