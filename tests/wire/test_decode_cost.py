"""Decoding costs what the frame's length justifies: every length and count check comes first.

The receiver here has a layout of d = 2^32 - 1 coordinates (never allocated: a Layout is
only names and shapes). Tiny frames that claim huge counts must be refused by name with
almost no memory (tracemalloc sees numpy's buffers) and without regenerating a seeded
index set (torch.randperm(d) would take 32 GiB here).
"""

import struct
import tracemalloc

import pytest
import torch

from fedpress import Layout
from fedpress.wire import QSGD, Affine, Dense, Message, Reason, WireError, decode, encode
from fedpress.wire import message as wire_message
from tests.wire.frames import f32, frame

HUGE = Layout.from_shapes({"w": (65535, 65537)})  # d = 2^32 - 1
D = HUGE.numel
N = D  # a count as large as the header can hold


def huge(sel, kind, sections, n=N):
    return frame(sel, kind, sections, d=D, n=n, fingerprint=HUGE.fingerprint())


SEED = struct.pack("<Q", 12345)
AFFINE4 = struct.pack("<BB", 4, 0)

HOSTILE = {
    # the 59-byte frame: seeded, affine, every value section empty
    "seeded affine, empty sections": (huge(2, 5, [SEED, AFFINE4, b"", b"", b"", b""]), Reason.LENGTH_MISMATCH),
    "seeded affine, n = 1000": (huge(2, 5, [SEED, AFFINE4, b"", b"", b"", b""], n=1000), Reason.LENGTH_MISMATCH),
    # well-formed scale and zero point, but codes and raw values cannot add up to n
    "seeded affine, codes short": (
        huge(2, 5, [SEED, AFFINE4, struct.pack("<d", 0.1), struct.pack("<i", 0), bytes(2), f32(1.0)]),
        Reason.LENGTH_MISMATCH),
    "seeded affine, raw not whole floats": (
        huge(2, 5, [SEED, AFFINE4, struct.pack("<d", 0.1), struct.pack("<i", 0), b"", bytes(6)], n=3),
        Reason.LENGTH_MISMATCH),
    "seeded affine, bad scale": (
        huge(2, 5, [SEED, AFFINE4, struct.pack("<d", -1.0), struct.pack("<i", 0), b"", f32(1.0)], n=1),
        Reason.BAD_PARAMETER),
    "seeded fp32": (huge(2, 0, [SEED, f32(1.0)]), Reason.LENGTH_MISMATCH),
    "dense fp32": (huge(0, 0, [f32(1.0)]), Reason.LENGTH_MISMATCH),
    "dense fp16": (huge(0, 1, [bytes(2)]), Reason.LENGTH_MISMATCH),
    "dense qsgd, one bucket": (huge(0, 3, [struct.pack("<HI", 7, N), f32(1.0), bytes(8)]), Reason.LENGTH_MISMATCH),
    "dense qsgd, unit buckets": (huge(0, 3, [struct.pack("<HI", 7, 1), f32(1.0), bytes(8)]), Reason.LENGTH_MISMATCH),
    "dense qsgd-elias, huge m": (
        huge(0, 4, [struct.pack("<HII", 7, N, N), f32(1.0), bytes([0]), b"", b"", b""]), Reason.LENGTH_MISMATCH),
    "dense qsgd-elias, bitmap of n": (
        huge(0, 4, [struct.pack("<HII", 7, N, 1), f32(1.0), bytes([1, 1]), b"\x00", b"\x01", b""]),
        Reason.LENGTH_MISMATCH),
    "dense affine": (huge(0, 5, [AFFINE4, struct.pack("<d", 0.1), struct.pack("<i", 0), bytes(2), b""]),
                     Reason.LENGTH_MISMATCH),
    "indexed raw32": (huge(1, 0, [bytes([0]) + bytes(8), f32(1.0)]), Reason.LENGTH_MISMATCH),
    "indexed bitmap": (huge(1, 0, [bytes([1]) + bytes(8), f32(1.0)]), Reason.LENGTH_MISMATCH),
    "indexed rice b=0": (huge(1, 0, [bytes([2]) + b"\xff" * 8, f32(1.0)]), Reason.COUNT_MISMATCH),
    "indexed rice b=31": (huge(1, 0, [bytes([2 | 31 << 3]) + b"\xff" * 8, f32(1.0)]), Reason.LENGTH_MISMATCH),
    "indexed enum": (huge(1, 0, [bytes([3]) + bytes(8), f32(1.0)]), Reason.BAD_PARAMETER),
}


@pytest.fixture
def no_randperm(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.randperm{args} ran while decoding a frame that is refused anyway")

    monkeypatch.setattr(wire_message.torch, "randperm", refuse)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_counts_fail_fast_by_name(name, no_randperm):
    data, reason = HOSTILE[name]
    assert len(data) < 100
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as e:
            decode(data, HUGE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.reason is reason, str(e.value)
    assert peak < 64 * 1024, f"{peak} bytes allocated to refuse a {len(data)}-byte frame"


def test_a_seeded_affine_frame_regenerates_its_index_set_once_and_last(monkeypatch):
    """A well-formed seeded affine frame needs the index set (to split codes from raw values):
    it is regenerated once, after every other check; a wrong split is refused after it."""
    layout = Layout.from_shapes({"w": (30, 20), "b": (20,)})
    d = layout.numel
    k, seed, calls = 60, 77, []
    coords = wire_message.seeded_indices(seed, d, k)
    n_q = int((coords < 600).sum())
    msg = Message(d, Affine(torch.arange(n_q, dtype=torch.uint8) % 16, torch.tensor([0.5], dtype=torch.float64),
                            torch.tensor([-2], dtype=torch.int32), torch.ones(k - n_q), bits=4), seed=seed)
    data = encode(msg, layout)
    randperm = torch.randperm
    monkeypatch.setattr(wire_message.torch, "randperm", lambda *a, **kw: calls.append(a) or randperm(*a, **kw))
    assert decode(data, layout).same_as(msg)
    assert calls == [(d,)]
    # the same sections with one value moved from the codes to the raw floats: lengths
    # consistent with n, but not with the split the seed implies
    wrong = Message(d, Affine(msg.values.codes[1:], msg.values.scales, msg.values.zero_points,
                              torch.ones(k - n_q + 1), bits=4), seed=seed)
    lengths = [8, 2, 8, 4, (4 * (n_q - 1) + 7) // 8, 4 * (k - n_q + 1)]
    body = [struct.pack("<Q", seed), struct.pack("<BB", 4, 0), struct.pack("<d", 0.5), struct.pack("<i", -2),
            _pack4(wrong.values.codes.tolist()), wrong.values.raw.numpy().astype("<f4").tobytes()]
    assert [len(s) for s in body] == lengths
    bad = frame(2, 5, body, d=d, n=k, fingerprint=layout.fingerprint())
    calls.clear()
    with pytest.raises(WireError) as e:
        decode(bad, layout)
    assert e.value.reason is Reason.LENGTH_MISMATCH, str(e.value)
    assert calls == [(d,)]


def _pack4(codes):
    return sum(c << (4 * i) for i, c in enumerate(codes)).to_bytes((4 * len(codes) + 7) // 8, "little")


def test_a_valid_all_zero_elias_frame_costs_two_bytes_per_symbol():
    """QSGD-Elias is the one coding whose frame can be far shorter than its count: m = 0
    nonzero symbols of n. The message holds n int16 symbols; decoding allocates no more."""
    layout = Layout.flat(1_000_000)
    n = layout.numel
    sections = [struct.pack("<HII", 7, n, 0), f32(1.0), bytes([0]), b"", b"", b""]
    data = frame(0, 4, sections, d=n, fingerprint=layout.fingerprint())
    tracemalloc.start()
    try:
        msg = decode(data, layout)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert msg.values.symbols.dtype == torch.int16 and not msg.values.symbols.any()
    assert peak < 2 * n + 64 * 1024, f"{peak} bytes for {n} int16 symbols"



def _frames_of_every_kind(layout: Layout):
    d = layout.numel
    g = torch.Generator().manual_seed(0)
    sparse = torch.arange(0, d, 2)
    yield Message(d, Dense(torch.randn(d, generator=g)))
    yield Message(d, Dense(torch.randn(d, generator=g).half()))
    yield Message(d, Dense(torch.ones(sparse.numel()).bfloat16()), indices=sparse)  # bitmap
    rare = torch.arange(0, d, 3000)
    yield Message(d, Dense(torch.ones(rare.numel())), indices=rare)  # Rice
    yield Message(d, Dense(torch.ones(50)), seed=3)
    for s in (1, 7, 127, 32767):
        sym = torch.randint(-s, s + 1, (d,), generator=g, dtype=torch.int16)
        yield Message(d, QSGD(sym, torch.ones(-(-d // 512)), levels=s, bucket=512))
        yield Message(d, QSGD(sym * (torch.rand(d, generator=g) < 0.01), torch.ones(1), levels=s, bucket=d,
                              elias=True))
    for bits in (1, 4, 8):
        yield Message(d, Affine(torch.randint(0, 2**bits, (d - 100,), generator=g, dtype=torch.uint8),
                                torch.tensor([0.1], dtype=torch.float64), torch.tensor([0], dtype=torch.int32),
                                torch.ones(100), bits=bits))


def test_decoding_memory_is_bounded_by_the_frame_length():
    """At most 150 bytes of (numpy) working memory per byte of frame, whatever the kind
    (bit unpacking works in 64-bit words); QSGD-Elias adds its n int16 symbols."""
    layout = Layout.from_shapes({"w": (200, 1000), "b": (100,)})
    for msg in _frames_of_every_kind(layout):
        data = encode(msg, layout)
        tracemalloc.start()
        try:
            decode(data, layout)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        elias = isinstance(msg.values, QSGD) and msg.values.elias
        assert peak <= 150 * len(data) + (2 * msg.n if elias else 0) + 4096, (msg.values, len(data), peak)
