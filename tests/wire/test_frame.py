"""The frame: byte layout as specified, exact round trips, one named error per reason."""

import struct

import numpy as np
import pytest
import torch

from fedpress import Layout
from fedpress.wire import QSGD, Affine, Dense, Message, Reason, WireError, decode, encode
from fedpress.wire import message as wire_message
from tests.wire.frames import LAYOUT, D, f32, frame

X = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -0.25])


def test_dense_fp32_bytes_are_the_documented_layout():
    expected = frame(0, 0, [f32(*X.tolist())])
    assert encode(Message(D, Dense(X)), LAYOUT) == expected
    assert len(expected) == 21 + 4 + 24 + 4  # header, one length, 6 floats, CRC


def test_sparse_fp16_bytes_are_the_documented_layout():
    idx = torch.tensor([1, 4])
    # index section: tag 0 (raw32) would be 8 bytes; bitmap of 6 coordinates is 1 byte: tag 1
    index_section = bytes([1, 0b010010])
    values = np.array([-2.0, 3.0], "<f2").tobytes()
    expected = frame(1, 1, [index_section, values], n=2)
    assert encode(Message(D, Dense(X[idx].half()), indices=idx), LAYOUT) == expected


def test_qsgd_bytes_are_the_documented_layout():
    sym = torch.tensor([1, -2, 0, 0, 2, 0], dtype=torch.int16)
    norms = torch.tensor([4.0, 2.0])
    # levels 2 -> codes sym + 2 in 3 bits: 3, 0, 2, 2, 4, 2 -> LSB-first bit stream
    codes = [3, 0, 2, 2, 4, 2]
    stream = sum(c << (3 * i) for i, c in enumerate(codes)).to_bytes(3, "little")
    expected = frame(0, 3, [struct.pack("<HI", 2, 3), f32(4.0, 2.0), stream])
    assert encode(Message(D, QSGD(sym, norms, levels=2, bucket=3)), LAYOUT) == expected


def random_messages():
    g = torch.Generator().manual_seed(0)
    layout = Layout.from_shapes({"conv": (4, 3, 3, 3), "bias": (4,), "fc": (10, 12), "fc_b": (10,)})
    d = layout.numel
    x = torch.randn(d, generator=g)
    idx = torch.randperm(d, generator=g)[:37].sort().values
    sym = torch.randint(-7, 8, (d,), generator=g, dtype=torch.int16)
    sym[::3] = 0
    yield layout, Message(d, Dense(x))
    yield layout, Message(d, Dense(x.bfloat16()))
    yield layout, Message(d, Dense(x[idx].half()), indices=idx)
    yield layout, Message(d, Dense(x[:37]), seed=2**63 + 5)
    yield layout, Message(d, QSGD(sym, torch.rand(-(-d // 50), generator=g), levels=7, bucket=50))
    yield layout, Message(d, QSGD(sym, torch.rand(1, generator=g), levels=7, bucket=d, elias=True))
    yield layout, Message(d, QSGD(sym[:37], torch.rand(1, generator=g), levels=7, bucket=37), indices=idx)
    n_q = 108 + 120
    codes = torch.randint(0, 16, (n_q,), generator=g, dtype=torch.uint8)
    raw = torch.randn(14, generator=g)
    yield layout, Message(d, Affine(codes, torch.tensor([0.1, 0.2], dtype=torch.float64),
                                    torch.tensor([-3, 4], dtype=torch.int32), raw, bits=4))
    seeded = wire_message.seeded_indices(99, d, 50)
    n_q = int((seeded < 108).sum() + ((seeded >= 112) & (seeded < 232)).sum())
    yield layout, Message(d, Affine(codes[:n_q], torch.tensor([0.1, 0.2], dtype=torch.float64),
                                    torch.tensor([-3, 4], dtype=torch.int32), raw[: 50 - n_q], bits=4), seed=99)


@pytest.mark.parametrize("case", list(random_messages()), ids=lambda c: type(c[1].values).__name__)
def test_round_trip_is_bit_exact(case):
    layout, msg = case
    data = encode(msg, layout)
    back = decode(data, layout)
    assert back.same_as(msg)
    assert torch.equal(back.expand(layout), msg.expand(layout))
    assert encode(back, layout) == data  # canonical: re-encoding gives the same bytes


def test_decode_accepts_bytearray_and_memoryview():
    data = encode(Message(D, Dense(X)), LAYOUT)
    assert decode(bytearray(data), LAYOUT).same_as(decode(memoryview(data), LAYOUT))


def raises(reason, data, layout=LAYOUT):
    with pytest.raises(WireError) as e:
        decode(data, layout)
    assert e.value.reason is reason, str(e.value)
    assert reason.name in str(e.value)


GOOD = frame(0, 0, [f32(*X.tolist())])


def test_truncated():
    raises(Reason.TRUNCATED, b"FP")
    raises(Reason.TRUNCATED, GOOD[:12])
    raises(Reason.TRUNCATED, GOOD[:-1])
    raises(Reason.TRUNCATED, frame(0, 0, [], nsec=3))  # claims 3 lengths it does not have


def test_bad_magic():
    raises(Reason.BAD_MAGIC, frame(0, 0, [f32(*X.tolist())], magic=b"PKZP"))


def test_bad_version():
    raises(Reason.BAD_VERSION, frame(0, 0, [f32(*X.tolist())], version=2))


def test_bad_checksum():
    raises(Reason.BAD_CHECKSUM, frame(0, 0, [f32(*X.tolist())], crc_delta=1))
    flipped = bytearray(GOOD)
    flipped[30] ^= 0x01  # one bit of one value, flipped in transit
    raises(Reason.BAD_CHECKSUM, bytes(flipped))


def test_unknown_kind():
    raises(Reason.UNKNOWN_KIND, frame(0, 9, [f32(*X.tolist())]))
    raises(Reason.UNKNOWN_KIND, frame(7, 0, [f32(*X.tolist())]))


def test_bad_reserved():
    raises(Reason.BAD_RESERVED, frame(0, 0, [f32(*X.tolist())], reserved=1))
    affine = [struct.pack("<BB", 4, 2), b"", b"", b"", f32(*X.tolist())]
    raises(Reason.BAD_RESERVED, frame(0, 5, affine))


def test_layout_mismatch():
    raises(Reason.LAYOUT_MISMATCH, GOOD, Layout.flat(7))
    raises(Reason.LAYOUT_MISMATCH, GOOD, Layout.from_shapes({"w": (4,), "b": (2,)}))  # same d


def test_section_count():
    raises(Reason.SECTION_COUNT, frame(0, 0, [f32(*X.tolist()), b""]))


def test_length_mismatch():
    raises(Reason.LENGTH_MISMATCH, frame(0, 0, [f32(*X.tolist()[:5])]))
    raises(Reason.LENGTH_MISMATCH, frame(2, 0, [b"\x00" * 7, f32(1.0)], n=1))  # 7-byte seed


def test_trailing_bytes():
    raises(Reason.TRAILING_BYTES, GOOD + b"\x00")


def test_count_mismatch():
    raises(Reason.COUNT_MISMATCH, frame(0, 0, [f32(*X.tolist()[:5])], n=5))  # dense but n != d
    raises(Reason.COUNT_MISMATCH, frame(1, 0, [bytes([1, 0b111]), f32(1.0, 2.0)], n=2))
    raises(Reason.COUNT_MISMATCH, frame(1, 0, [bytes([0]), f32(*range(7))], n=7))  # 7 values, d = 6


def test_index_out_of_range():
    raw = bytes([0]) + np.array([2, 6], "<u4").tobytes()
    raises(Reason.INDEX_OUT_OF_RANGE, frame(1, 0, [raw, f32(1.0, 2.0)], n=2))


def test_index_not_sorted():
    for order in ([4, 2], [3, 3]):
        raw = bytes([0]) + np.array(order, "<u4").tobytes()
        raises(Reason.INDEX_NOT_SORTED, frame(1, 0, [raw, f32(1.0, 2.0)], n=2))


def test_bad_padding():
    # 6 symbols of 3 bits = 18 bits in 3 bytes; bit 23 is padding and set here
    stream = (sum(2 << (3 * i) for i in range(6)) | 1 << 23).to_bytes(3, "little")
    raises(Reason.BAD_PADDING, frame(0, 3, [struct.pack("<HI", 2, 6), f32(1.0), stream]))


def test_bad_parameter():
    stream = bytes(3)
    raises(Reason.BAD_PARAMETER, frame(0, 3, [struct.pack("<HI", 0, 6), f32(1.0), stream]))
    raises(Reason.BAD_PARAMETER, frame(0, 3, [struct.pack("<HI", 2, 6), f32(-1.0), stream]))
    raises(Reason.BAD_PARAMETER, frame(0, 5, [struct.pack("<BB", 9, 0), b"", b"", b"", f32(*X.tolist())]))
    bad_scale = [struct.pack("<BB", 8, 0), struct.pack("<d", 0.0), struct.pack("<i", 0), bytes(4), f32(1.0, 2.0)]
    raises(Reason.BAD_PARAMETER, frame(0, 5, bad_scale))


def test_bad_parameter_bounds_what_a_receiver_must_allocate():
    # a bucket longer than the 6 values would make the receiver expand norms to 2^32 entries
    raises(Reason.BAD_PARAMETER, frame(0, 3, [struct.pack("<HI", 2, 2**32 - 1), f32(1.0), bytes(3)]))
    # a finite fp64 scale that overflows fp32 once multiplied by a code
    huge = [struct.pack("<BB", 8, 0), struct.pack("<d", 1e300), struct.pack("<i", 0), bytes(4), f32(1.0, 2.0)]
    raises(Reason.BAD_PARAMETER, frame(0, 5, huge))


def test_symbol_out_of_range():
    # levels 2 -> codes in 0..4 over 3 bits; code 7 is not a symbol
    stream = (7 | sum(2 << (3 * i) for i in range(1, 6))).to_bytes(3, "little")
    raises(Reason.SYMBOL_OUT_OF_RANGE, frame(0, 3, [struct.pack("<HI", 2, 6), f32(1.0), stream]))


def test_non_finite():
    raises(Reason.NON_FINITE, frame(0, 0, [f32(1.0, float("nan"), 0.0, 0.0, 0.0, 0.0)]))
    raises(Reason.NON_FINITE, frame(0, 3, [struct.pack("<HI", 2, 6), f32(float("inf")), bytes(3)]))
    raises(Reason.NON_FINITE, frame(0, 1, [np.array([1, 2, 3, 4, 5, np.inf], "<f2").tobytes()]))


def test_not_canonical():
    # the sparse fp16 frame above with its index set [1, 4] as raw32 (8 bytes) instead of
    # the bitmap the encoder writes (1 byte): the same message, other bytes
    values = np.array([-2.0, 3.0], "<f2").tobytes()
    raw32 = bytes([0]) + np.array([1, 4], "<u4").tobytes()
    raises(Reason.NOT_CANONICAL, frame(1, 1, [raw32, values], n=2))
    # Golomb-Rice with b = 1 for the same set: remainders 1, 0 then quotients 0, 1 in unary
    rice = bytes([2 | 1 << 3, 0b01, 0b101])
    raises(Reason.NOT_CANONICAL, frame(1, 1, [rice, values], n=2))
    # an empty index set carries no bytes in raw32; Rice with any parameter is the same set
    raises(Reason.NOT_CANONICAL, frame(1, 0, [bytes([2 | 5 << 3]), b""], n=0))
    assert decode(frame(1, 0, [bytes([0]), b""], n=0), LAYOUT).n == 0  # the canonical one decodes


def test_encoder_refuses_what_the_decoder_would():
    with pytest.raises(WireError) as e:
        encode(Message(D, Dense(torch.tensor([1.0, 7e4, 0, 0, 0, 0]).half())), LAYOUT)
    assert e.value.reason is Reason.NON_FINITE  # 70000 overflows fp16 to inf
    with pytest.raises(WireError) as e:
        encode(Message(D, Dense(X[:2]), indices=torch.tensor([3, 1])), LAYOUT)
    assert e.value.reason is Reason.INDEX_NOT_SORTED
    with pytest.raises(WireError) as e:
        encode(Message(D, Dense(X)), Layout.flat(7))
    assert e.value.reason is Reason.LAYOUT_MISMATCH
    negative = Affine(torch.tensor([-1, 0, 0, 0], dtype=torch.int32), torch.tensor([0.1], dtype=torch.float64),
                      torch.tensor([0], dtype=torch.int32), torch.zeros(2), bits=2)
    with pytest.raises(WireError) as e:
        encode(Message(D, negative), LAYOUT)
    assert e.value.reason is Reason.SYMBOL_OUT_OF_RANGE


def test_every_reason_has_a_test_here():
    tested = {name[len("test_"):].upper() for name in globals() if name.startswith("test_")}
    assert {r.name for r in Reason} <= tested
