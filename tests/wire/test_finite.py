"""Every value an accepted frame can expand to is finite, decided by the arithmetic Message.expand uses.

QSGD: value = fl32(fl32(norm / s) * symbol) with |symbol| <= s, so a bucket's largest value
is fl32(fl32(norm / s) * s). Affine: value = fl32(fl32(q - zero_point) * fl32(scale)) with
|q - zero_point| <= 2^bits - 1, the fp64 scale rounded to fp32 first. Both are monotone in
the norm / scale, so the accepted norms (scales) are exactly those up to an edge. The
edges are found here independently (numpy float32, binary search over bit patterns) for
every level in [1, 32767] and every bit width in [1, 8]; the decoder must accept the edge
and expand it finitely, refuse the next float32 up by name, and the encoder must refuse
what the decoder refuses.
"""

import struct

import numpy as np
import pytest
import torch

from fedpress import Layout
from fedpress.wire import QSGD, Affine, Message, Reason, WireError, decode, encode
from tests.wire.frames import frame

F32_MAX = np.finfo(np.float32).max
MAX_LEVELS = 32767


def largest_accepted(ok, size: int) -> np.ndarray:
    """Per case, the largest non-negative float32 x with ok(x) (ok monotone, ok(0) true, ok(inf) false)."""
    lo = np.zeros(size, dtype=np.uint32)  # float32 0.0: accepted
    hi = np.full(size, 0x7F800000, dtype=np.uint32)  # float32 inf: refused
    while bool((hi - lo > 1).any()):
        mid = lo + (hi - lo) // 2
        good = ok(mid.view(np.float32))
        lo, hi = np.where(good, mid, lo), np.where(good, hi, mid)
    return lo.view(np.float32)


def next_up(x: np.ndarray) -> np.ndarray:
    return np.nextafter(x.astype(np.float32), np.float32(np.inf))


def qsgd_edges() -> np.ndarray:
    s = np.arange(1, MAX_LEVELS + 1).astype(np.float32)
    with np.errstate(over="ignore"):
        return largest_accepted(lambda norm: np.isfinite((norm / s) * s), s.size)  # expand's arithmetic


def qsgd_frame(levels: int, norms, symbols) -> tuple[Layout, bytes]:
    n = len(symbols)
    layout = Layout.flat(n)
    width = (2 * levels).bit_length()
    stream = sum((v + levels) << (width * i) for i, v in enumerate(symbols)).to_bytes((n * width + 7) // 8, "little")
    sections = [struct.pack("<HI", levels, 1), np.asarray(norms, "<f4").tobytes(), stream]
    return layout, frame(0, 3, sections, d=n, fingerprint=layout.fingerprint())


def refused(reason: Reason, data: bytes, layout: Layout) -> None:
    with pytest.raises(WireError) as e:
        decode(data, layout)
    assert e.value.reason is reason, str(e.value)


def test_the_issue_reproducer_is_refused_at_both_ends():
    layout = Layout.flat(1)
    msg = Message(1, QSGD(torch.tensor([127], dtype=torch.int16), torch.tensor([3.4028234663852886e38]),
                          levels=127, bucket=1))
    with pytest.raises(WireError) as e:
        encode(msg, layout)
    assert e.value.reason is Reason.BAD_PARAMETER
    refused(Reason.BAD_PARAMETER, qsgd_frame(127, [3.4028234663852886e38], [127])[1], layout)


def test_qsgd_every_level_accepts_its_edge_norm_and_refuses_the_next_float32():
    edges = qsgd_edges()
    # the levels named in the issue overflow at the float32 maximum; 1 and powers of two do not
    for s in (25, 31, 127, 32767):
        assert edges[s - 1] < F32_MAX
    assert edges[0] == F32_MAX and edges[1023] == F32_MAX
    for s in range(1, MAX_LEVELS + 1):
        edge = float(edges[s - 1])
        above = float(next_up(edges[s - 1]))
        # accepted: both signs of the largest symbol, expanded to finite values
        layout, data = qsgd_frame(s, [edge, edge], [s, -s])
        msg = decode(data, layout)
        x = msg.expand(layout)
        assert bool(torch.isfinite(x).all()), (s, edge)
        assert encode(msg, layout) == data
        # the next float32 up is refused by name, by the decoder and by the encoder
        reason = Reason.NON_FINITE if above == float("inf") else Reason.BAD_PARAMETER
        layout, bad = qsgd_frame(s, [edge, above], [0, 1])
        refused(reason, bad, layout)
        with pytest.raises(WireError) as e:
            encode(Message(2, QSGD(torch.tensor([0, 1], dtype=torch.int16), torch.tensor([edge, above]),
                                   levels=s, bucket=1)), layout)
        assert e.value.reason is reason, (s, str(e.value))


AFFINE_LAYOUT = Layout.from_shapes({"a": (1, 2), "b": (1, 2)})


def affine_message(bits: int, scale: float) -> Message:
    """Tensor a reaches +(2^bits - 1) * scale, tensor b -(2^bits - 1) * scale: the extremes."""
    qmin, qmax, m = -(1 << (bits - 1)), (1 << (bits - 1)) - 1, (1 << bits) - 1
    codes = torch.tensor([m, 0, 0, m], dtype=torch.uint8)
    return Message(4, Affine(codes, torch.tensor([scale, scale], dtype=torch.float64),
                             torch.tensor([qmin, qmax], dtype=torch.int32), torch.zeros(0), bits=bits))


def affine_frame(bits: int, scale: float) -> bytes:
    qmin, qmax, m = -(1 << (bits - 1)), (1 << (bits - 1)) - 1, (1 << bits) - 1
    codes = (m | m << (3 * bits)).to_bytes((4 * bits + 7) // 8, "little")
    sections = [struct.pack("<BB", bits, 0), struct.pack("<2d", scale, scale), struct.pack("<2i", qmin, qmax),
                codes, b""]
    return frame(0, 5, sections, d=4, fingerprint=AFFINE_LAYOUT.fingerprint())


@pytest.mark.parametrize("bits", range(1, 9))
def test_affine_every_bit_width_accepts_its_edge_scale_and_refuses_the_next(bits):
    m = np.float32((1 << bits) - 1)
    with np.errstate(over="ignore"):
        edge = largest_accepted(lambda scale: np.isfinite(scale * m), 1)[0]  # expand's arithmetic, fp32 scale
        above = next_up(np.array([edge]))[0]
        # the largest fp64 scale that still rounds to the edge in fp32 (round half to even)
        mid = (float(edge) + (float(above) if np.isfinite(above) else 2.0**128)) / 2
        largest64 = mid if np.float32(mid) == edge else float(np.nextafter(mid, 0.0))
        old = float(F32_MAX) / float(m)  # the old limit, float32 max / (2^bits - 1) in fp64
        old_rounds_up = bool(np.float32(old) > edge)
    for scale in (float(edge), largest64):
        data = affine_frame(bits, scale)
        assert encode(affine_message(bits, scale), AFFINE_LAYOUT) == data
        x = decode(data, AFFINE_LAYOUT).expand(AFFINE_LAYOUT)
        assert bool(torch.isfinite(x).all()) and x.abs().max() > 0
        assert x[0] == -x[2] == float(m * edge)  # both extremes are reached
    refusals = [(float(np.nextafter(largest64, np.inf)), Reason.BAD_PARAMETER)]
    refusals.append((float(above), Reason.BAD_PARAMETER if np.isfinite(above) else Reason.NON_FINITE))
    # the old limit rounds up in fp32 for 5 and 7 bits: it decoded to inf
    assert old_rounds_up == (bits in (5, 7))
    if old_rounds_up:
        refusals.append((old, Reason.BAD_PARAMETER))
    for scale, reason in refusals:
        refused(reason, affine_frame(bits, scale), AFFINE_LAYOUT)
        with pytest.raises(WireError) as e:
            encode(affine_message(bits, scale), AFFINE_LAYOUT)
        assert e.value.reason is reason, str(e.value)
