"""Fuzz the wire decoder with random and mutated frames from every codec of fedpress.compress.

The wire's promise (docs/architecture.md, "Strict decoding"): a decoded frame is exactly
what was sent, or a WireError with a named Reason. Every input here is decoded; an
accepted frame must expand to finite values and re-encode to itself byte for byte, and
nothing but a WireError may come out of the decoder. Anything else is a violation (a bug).

Inputs: valid frames of every codec (dense fp32/fp16/bf16, top-k, random-k plain and
seeded, thresholds, QSGD bit-packed and Elias, min-max affine, chains of a selector and
a quantizer, error feedback) and of hand-made messages at the edges of the parameter
ranges, then mutated: bits, bytes, whole header fields, a section's contents or length
(the section table kept consistent), sections spliced from other frames, edge floats
written into norms and scales; and random bytes, and frames synthesized from a valid
header with random sections. The CRC is repaired on almost every input so that the
mutations reach the checks behind it.

    .venv/bin/python benchmarks/bench_fuzz.py [--count 1000000] [--seconds S] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from fedpress import Layout
from fedpress.compress import (
    bf16,
    chain,
    ema_threshold,
    error_feedback,
    fp16,
    fp32,
    minmax_affine,
    qsgd,
    random_k,
    threshold,
    top_k,
)
from fedpress.rng import derive
from fedpress.wire import QSGD, Affine, Message, Reason, WireError, decode, encode
from fedpress.wire.frame import _affine_counts  # the codes/raw split the encoder uses
from fedpress.wire.message import affine_reach, qsgd_reach

F32_MAX = float(np.finfo(np.float32).max)

LAYOUTS = [
    # matrices (quantized by min-max affine), vectors, a scalar and an empty tensor
    Layout.from_shapes([("conv", (4, 3, 3)), ("conv_b", (4,)), ("fc", (6, 8)), ("fc_b", (6,)),
                        ("scale", ()), ("empty", (0, 5))]),
    Layout.from_shapes([("w", (40, 30)), ("b", (30,)), ("v", (300,))]),
]


def codecs():
    """One instance of every codec family, and the chains the runtime uses."""
    return [
        fp32(), fp16(), bf16(),
        top_k(0.1), top_k(0.6), top_k(k=3), top_k(0.05, scope="tensor"),
        random_k(0.1), random_k(0.3, unbiased=True), random_k(0.1, seeded=True),
        threshold(0.8), ema_threshold(0.5, "rms"),
        qsgd(1), qsgd(7, 16), qsgd(127, 32), qsgd(32767, 8), qsgd(3, elias=True), qsgd(300, 64, elias=True),
        minmax_affine(4), minmax_affine(1), minmax_affine(8, quantize_1d=True),
        chain(top_k(0.1), fp16()), chain(top_k(0.2), bf16()),
        chain(top_k(0.1), qsgd(7)), chain(top_k(0.3), qsgd(2, 4, elias=True)),
        chain(top_k(0.2), minmax_affine(4)), chain(top_k(0.2), minmax_affine(2, quantize_1d=True)),
        chain(random_k(0.2, seeded=True), minmax_affine(3)), chain(random_k(0.2, seeded=True), qsgd(5, 8)),
        chain(random_k(0.2, seeded=True), fp16()), chain(threshold(1.0), fp16()),
        error_feedback(chain(top_k(0.1), fp16())),
    ]


def largest_finite(reach, start: float) -> float:
    """The largest float32 at or below `start` whose reach is finite (the decoder's edge)."""
    x = np.float32(start)
    while not bool(torch.isfinite(reach(torch.tensor([float(x)]))).all()):
        x = np.nextafter(x, np.float32(0))
    return float(x)


def edge_messages(layout: Layout) -> list[Message]:
    """Messages at the edges of what the decoder accepts: the largest norms and scales that
    expand finitely (one bit flip from refused), 0 and ±s symbols, the extreme codes."""
    d = layout.numel
    out = []
    for s in (1, 3, 25, 31, 127, 32767):
        sym = torch.zeros(d, dtype=torch.int16)
        sym[::2], sym[1::3] = s, -s
        edge = largest_finite(lambda n, s=s: qsgd_reach(n, s), F32_MAX)
        for norm in (edge, F32_MAX / 2 / s, 1e-38, 0.0):
            out.append(Message(d, QSGD(sym, torch.full((-(-d // 16),), norm), levels=s, bucket=min(16, d))))
    for bits in (1, 5, 7, 8):
        n_q, t_q = _affine_counts(layout, False)
        m = (1 << bits) - 1
        codes = (torch.arange(n_q) % (m + 1)).to(torch.uint8)
        zp = torch.tensor([-(1 << (bits - 1)) if t % 2 else (1 << (bits - 1)) - 1 for t in range(t_q)],
                          dtype=torch.int32)
        edge = largest_finite(lambda x, bits=bits: affine_reach(x.double(), bits), F32_MAX / m)
        for scale in (edge, F32_MAX / m / 2, 1e-45, 3.0):
            raw = torch.linspace(-1, 1, d - n_q)
            out.append(Message(d, Affine(codes, torch.full((t_q,), scale, dtype=torch.float64), zp, raw, bits=bits)))
    return out


def base_frames(seed: int = 0) -> list[tuple[Layout, bytes]]:
    """Valid frames: every codec on three inputs per layout, and the edge messages."""
    out = []
    for li, layout in enumerate(LAYOUTS):
        d = layout.numel
        g = torch.Generator().manual_seed(seed + li)
        inputs = [torch.randn(d, generator=g), torch.randn(d, generator=g) ** 3 * 1e3,
                  torch.where(torch.rand(d, generator=g) < 0.7, 0.0, torch.randn(d, generator=g) * 1e-3)]
        for ci, codec in enumerate(codecs()):
            state = codec.init(layout)
            for xi, x in enumerate(inputs):
                msg, state = codec.encode(x, layout, state, derive(seed, "fuzz", li, ci, xi))
                out.append((layout, encode(msg, layout)))
        for msg in edge_messages(layout):
            out.append((layout, encode(msg, layout)))
    return out


# ============================================================================ mutation


def split(frame: bytes) -> tuple[bytearray, list[bytearray]]:
    """A valid frame as (the 20 header bytes before the section count, its sections)."""
    nsec = frame[20]
    lengths = struct.unpack_from(f"<{nsec}I", frame, 21)
    at, sections = 21 + 4 * nsec, []
    for n in lengths:
        sections.append(bytearray(frame[at : at + n]))
        at += n
    return bytearray(frame[:20]), sections


def join(head: bytes, sections: list[bytes]) -> bytes:
    body = bytes(head) + bytes([len(sections) & 0xFF]) + b"".join(struct.pack("<I", len(s)) for s in sections)
    body += b"".join(sections)
    return body + struct.pack("<I", zlib.crc32(body))


def fix_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4])) if len(data) >= 4 else data


_F32_EDGES = [struct.pack("<I", b) for b in (0x7F7FFFFF, 0x7F7FFFFE, 0x7F800000, 0xFF800000, 0x7FC00000,
                                             0x80000000, 0x00000001, 0x7F000000, 0x7EFFFFFF, 0xBF800000)]
_F64_EDGES = [struct.pack("<d", v) for v in (F32_MAX, F32_MAX / 3, F32_MAX / 31, F32_MAX / 127, F32_MAX / 255,
                                             1e300, float("inf"), float("nan"), 0.0, -0.0, 5e-324, 1e-50, -1.0)]


def index_sets(layout: Layout, frame: bytes) -> list[tuple[int, list[int], int]]:
    """(section number, coordinates, range) of the index sets in a valid frame: the selection
    of an INDEXED frame, the nonzero positions of a QSGD-Elias one."""
    msg = decode(frame, layout)
    out = []
    if msg.indices is not None:
        out.append((0, msg.indices.tolist(), msg.d))
    if isinstance(msg.values, QSGD) and msg.values.elias:
        at = 2 + (msg.indices is not None or msg.seed is not None)
        out.append((at, torch.nonzero(msg.values.symbols).squeeze(1).tolist(), msg.n))
    return out


class Mutator:
    def __init__(self, bases: list[tuple[Layout, bytes]], seed: int):
        self.rng = random.Random(seed)
        self.bases = bases
        self.parsed = [split(b) for _, b in bases]
        self.index_sets = [index_sets(layout, b) for layout, b in bases]

    def u32(self, layout: Layout, current: int) -> int:
        r = self.rng
        d = layout.numel
        return r.choice([0, 1, 2, 3, 7, 8, d - 1, d, d + 1, current - 1, current + 1, current * 2, 2**31 - 1,
                         2**31, 2**32 - 1, r.randrange(2**32)]) % 2**32

    def next(self) -> tuple[Layout, bytes]:
        r = self.rng
        roll = r.random()
        if roll < 0.03:  # random bytes, sometimes behind a valid magic and version
            layout = self.bases[r.randrange(len(self.bases))][0]
            data = r.randbytes(r.randrange(0, 120))
            return layout, (b"FPRS\x01" + data if r.random() < 0.5 else data)
        i = r.randrange(len(self.bases))
        layout, good = self.bases[i]
        head, sections = bytearray(self.parsed[i][0]), [bytearray(s) for s in self.parsed[i][1]]
        if roll < 0.08:  # a valid header over random sections, with random counts
            head[5], head[6] = r.randrange(4), r.randrange(7)
            struct.pack_into("<I", head, 16, self.u32(layout, layout.numel))
            sections = [bytearray(r.randbytes(r.choice([0, 1, 2, 4, 6, 8, 10, 16, r.randrange(64)])))
                        for _ in range(r.choice([1, 2, 3, 4, 5, 6, 7]))]
            return layout, join(head, sections)
        for _ in range(r.choice([1, 1, 1, 2, 2, 3, 4])):
            self.structured(layout, head, sections, self.index_sets[i])
        data = bytearray(join(head, sections))
        if r.random() < 0.25:  # raw byte edits on the whole frame, then (mostly) a repaired CRC
            for _ in range(r.choice([1, 1, 2, 3])):
                self.raw(data)
            data = bytes(data)
            return layout, fix_crc(data) if r.random() < 0.9 else data
        if r.random() < 0.02:
            data[-1] ^= 1 << r.randrange(8)
        return layout, bytes(data)

    def structured(self, layout: Layout, head: bytearray, sections: list[bytearray], sets: list) -> None:
        r = self.rng
        op = r.randrange(10)
        if op == 9 and sets:  # an index set recoded by hand: raw32, perturbed or not (sorted? in range? canonical?)
            at, idx, d = r.choice(sets)
            idx = list(idx)
            change = r.randrange(5)
            if change == 1 and len(idx) >= 2:
                i = r.randrange(len(idx) - 1)
                idx[i], idx[i + 1] = idx[i + 1], idx[i]
            elif change == 2 and len(idx) >= 2:
                i = r.randrange(len(idx) - 1)
                idx[i + 1] = idx[i]
            elif change == 3 and idx:
                idx[-1] = r.choice([d, d + 1, 2**32 - 1])
            if at < len(sections):
                sections[at] = bytearray(b"\x00" + struct.pack(f"<{len(idx)}I", *idx))
            return
        nonempty = [s for s in sections if s]
        if op == 0 and nonempty:  # flip a bit inside a section
            s = r.choice(nonempty)
            s[r.randrange(len(s))] ^= 1 << r.randrange(8)
        elif op == 1 and nonempty:  # set a byte inside a section
            s = r.choice(nonempty)
            s[r.randrange(len(s))] = r.choice([0, 1, 0x7F, 0x80, 0xFF, r.randrange(256)])
        elif op == 2 and sections:  # grow or shrink a section; the length table follows
            s = r.choice(sections)
            at = r.randrange(len(s) + 1)
            if r.random() < 0.5:
                s[at:at] = r.randbytes(r.choice([1, 1, 2, 4, 8]))
            else:
                del s[at : at + r.choice([1, 1, 2, 4, 8])]
        elif op == 3:  # a header count or dimension
            off = r.choice([8, 16, 16, 16])
            struct.pack_into("<I", head, off, self.u32(layout, struct.unpack_from("<I", head, off)[0]))
        elif op == 4:  # a kind, reserved or version byte
            at = r.choice([4, 5, 6, 6, 7])
            head[at] = r.choice([0, 1, 2, 3, 4, 5, 6, 255])
        elif op == 5 and sections:  # splice in the same section of another frame
            j = r.randrange(len(self.parsed))
            other = self.parsed[j][1]
            k = r.randrange(len(sections))
            if k < len(other):
                sections[k] = bytearray(other[k])
        elif op == 6 and nonempty:  # an edge float (norms, scales, raw values) at an aligned offset
            s = r.choice(nonempty)
            edge = r.choice(_F64_EDGES if r.random() < 0.4 else _F32_EDGES)
            if len(s) >= len(edge):
                at = r.randrange(len(s) // len(edge)) * len(edge)
                s[at : at + len(edge)] = edge
        elif op == 7 and sections and r.random() < 0.3:  # drop or duplicate a section (the count follows)
            k = r.randrange(len(sections))
            if r.random() < 0.5:
                del sections[k]
            else:
                sections.insert(k, bytearray(sections[k]))
        elif op == 8 and nonempty:  # the tag byte of an index set, or a parameter byte
            s = r.choice(nonempty)
            s[0] = r.choice([0, 1, 2, 3, 4, 7, r.randrange(256)]) if r.random() < 0.5 else \
                (s[0] & 7) | (r.randrange(32) << 3)

    def raw(self, data: bytearray) -> None:
        r = self.rng
        if not data:
            data += r.randbytes(4)
            return
        op = r.randrange(4)
        at = r.randrange(len(data))
        if op == 0:
            data[at] ^= 1 << r.randrange(8)
        elif op == 1:
            data[at] = r.randrange(256)
        elif op == 2:
            del data[at : at + r.choice([1, 2, 4, 8])]
        else:
            data[at:at] = r.randbytes(r.choice([1, 2, 4]))


# ============================================================================ the run


@dataclass
class Result:
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)  # "accepted" or a Reason name -> count
    violations: list = field(default_factory=list)  # (what, hex of the input), the first few
    violation_count: int = 0
    violation_kinds: Counter = field(default_factory=Counter)
    bases: int = 0


def check(data: bytes, layout: Layout, result: Result) -> None:
    """Decode one input and hold the decoder to its promise; count the outcome."""
    try:
        msg = decode(data, layout)
    except WireError as e:
        result.outcomes[e.reason.name] += 1
        return
    except Exception as e:  # noqa: BLE001 - anything but a WireError is a violation
        return violation(result, f"decode raised {type(e).__name__}", data, str(e))
    result.outcomes["accepted"] += 1
    try:
        x = msg.expand(layout)
    except Exception as e:  # noqa: BLE001
        return violation(result, f"expand raised {type(e).__name__}", data, str(e))
    if x.shape != (layout.numel,) or x.dtype != torch.float32 or not bool(torch.isfinite(x).all()):
        return violation(result, "expanded to non-finite values (or a wrong shape)", data)
    try:
        again = encode(msg, layout)
    except Exception as e:  # noqa: BLE001
        return violation(result, f"re-encode raised {type(e).__name__}", data, str(e))
    if again != data:
        return violation(result, "re-encodes to other bytes (not canonical)", data)


def violation(result: Result, what: str, data: bytes, detail: str = "") -> None:
    result.violation_count += 1
    result.violation_kinds[what] += 1
    if len(result.violations) < 20:
        result.violations.append((f"{what}: {detail}" if detail else what, data.hex()))


def fuzz(count: int, seconds: float | None = None, seed: int = 0, progress: bool = False) -> Result:
    """Decode `count` random and mutated inputs (or as many as fit in `seconds`)."""
    bases = base_frames(seed)
    mutator = Mutator(bases, seed)
    result = Result(bases=len(bases))
    first = Result()
    for layout, good in bases:  # the unmutated frames first: every one must be accepted
        refused = first.outcomes.total() - first.outcomes["accepted"]
        check(good, layout, first)
        if first.outcomes.total() - first.outcomes["accepted"] > refused:
            violation(first, "a valid frame was refused", good)
    result.violations, result.violation_count, result.violation_kinds = \
        first.violations, first.violation_count, first.violation_kinds
    start = time.perf_counter()
    report_at = start + 30
    while result.inputs < count:
        layout, data = mutator.next()
        check(data, layout, result)
        result.inputs += 1
        if result.inputs % 1000 == 0:
            now = time.perf_counter()
            if seconds is not None and now - start >= seconds:
                break
            if progress and now >= report_at:
                report_at = now + 30
                print(f"  {result.inputs:,} inputs, {result.inputs / (now - start):,.0f}/s, "
                      f"{result.violation_count} violations", flush=True)
    result.seconds = time.perf_counter() - start
    return result


def report(result: Result, count: int, seed: int) -> None:
    print(f"fuzz: {result.inputs:,} of {count:,} inputs in {result.seconds:.1f} s, "
          f"{result.inputs / max(result.seconds, 1e-9):,.0f} inputs/s (seed {seed}, {result.bases} valid base "
          f"frames of {len(codecs())} codecs and edge messages on {len(LAYOUTS)} layouts, decoded first)")
    total = sum(result.outcomes.values())
    print(f"{'outcome':>20} {'count':>10} {'share':>7}")
    names = ["accepted"] + [r.name for r in Reason]
    for name in names + sorted(set(result.outcomes) - set(names)):
        n = result.outcomes.get(name, 0)
        print(f"{name:>20} {n:>10,} {n / max(total, 1):>7.2%}")
    print(f"violations: {result.violation_count}")
    for what, n in result.violation_kinds.most_common():
        print(f"{n:>10,}  {what}")
    for what, data in result.violations:
        print(f"  {what}: {data}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs to decode (default 1,000,000)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = fuzz(args.count, args.seconds, args.seed, progress=True)
    report(result, args.count, args.seed)
    sys.exit(1 if result.violation_count else 0)


if __name__ == "__main__":
    main()
