"""The frame: a Message as bytes, and strictly back.

Byte layout (all integers little-endian; docs/architecture.md "Wire format" is the spec):

    offset  size  field
    0       4     magic  b"FPRS"
    4       1     version (1)
    5       1     selection kind   0 ALL | 1 INDEXED | 2 SEEDED
    6       1     value kind       0 F32 | 1 F16 | 2 BF16 | 3 QSGD | 4 QSGD_ELIAS | 5 AFFINE
    7       1     reserved, 0
    8       4     d        length of the vector (must equal the receiver's layout)
    12      4     layout fingerprint (CRC-32 of names and shapes)
    16      4     n        number of values carried (d for ALL)
    20      1     s        number of sections
    21      4*s   section lengths, uint32 each
    ...           the s sections, back to back
    end-4   4     CRC-32 of every byte before it

Sections, in order: the selection's (INDEXED: one index-coded set; SEEDED: one uint64
seed), then the values' (F32/F16/BF16: one array; QSGD: params, norms, packed symbols;
QSGD_ELIAS: params, norms, nonzero positions, signs, gamma prefixes, gamma mantissas;
AFFINE: params, scales, zero points, packed codes, raw fp32).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

from fedpress.layout import Layout
from fedpress.wire.bits import (
    gamma_decode,
    gamma_encode,
    nbytes_for,
    pack_fixed,
    unpack_fixed,
)
from fedpress.wire.errors import Reason, WireError, require
from fedpress.wire.indexcode import decode_indices, encode_indices
from fedpress.wire.message import (
    QSGD,
    Affine,
    Dense,
    Message,
    affine_quantized,
    affine_reach,
    qsgd_reach,
    seeded_indices,
    value_layout,
)

MAGIC = b"FPRS"
VERSION = 1
HEADER = struct.Struct("<4sBBBBIIIB")  # 21 bytes
CRC = struct.Struct("<I")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
QSGD_PARAMS = struct.Struct("<HI")  # levels, bucket
QSGD_ELIAS_PARAMS = struct.Struct("<HII")  # levels, bucket, number of nonzero symbols
AFFINE_PARAMS = struct.Struct("<BB")  # bits, flags (bit 0: quantize_1d)

SEL_ALL, SEL_INDEXED, SEL_SEEDED = 0, 1, 2
VAL_F32, VAL_F16, VAL_BF16, VAL_QSGD, VAL_QSGD_ELIAS, VAL_AFFINE = range(6)
_SEL_SECTIONS = {SEL_ALL: 0, SEL_INDEXED: 1, SEL_SEEDED: 1}
_VAL_SECTIONS = {VAL_F32: 1, VAL_F16: 1, VAL_BF16: 1, VAL_QSGD: 3, VAL_QSGD_ELIAS: 6, VAL_AFFINE: 5}
_FLOAT_KIND = {torch.float32: VAL_F32, torch.float16: VAL_F16, torch.bfloat16: VAL_BF16}
_KIND_FLOAT = {v: k for k, v in _FLOAT_KIND.items()}
_NUMPY_OF = {VAL_F32: "<f4", VAL_F16: "<f2", VAL_BF16: "<i2"}
MAX_LEVELS = 32767  # symbols travel as int16


# ============================================================================ encode


def encode(msg: Message, layout: Layout) -> bytes:
    """Bytes for `msg`. Refuses (WireError) what a decoder would refuse: no garbage is sent."""
    require(msg.d == layout.numel, Reason.LAYOUT_MISMATCH, f"message d={msg.d}, layout d={layout.numel}")
    require(msg.d < 2**32 and msg.n < 2**32, Reason.COUNT_MISMATCH, "d and n must fit in 32 bits")
    coords = msg.indices
    if msg.seed is not None:
        require(0 <= msg.seed < 2**64, Reason.BAD_PARAMETER, f"seed {msg.seed} is not a uint64")
        selection, sections = SEL_SEEDED, [U64.pack(msg.seed)]
        require(msg.n <= msg.d, Reason.COUNT_MISMATCH, f"{msg.n} values for {msg.d} coordinates")
        coords = msg.coordinates() if isinstance(msg.values, Affine) else None  # only affine needs them
    elif msg.indices is not None:
        idx = msg.indices.numpy()
        require(idx.size == msg.n, Reason.COUNT_MISMATCH, f"{idx.size} indices for {msg.n} values")
        if idx.size:
            require(int(idx.min()) >= 0 and int(idx.max()) < msg.d, Reason.INDEX_OUT_OF_RANGE,
                    f"indices must lie in [0, {msg.d})")
            require(bool((np.diff(idx) > 0).all()), Reason.INDEX_NOT_SORTED, "indices must be strictly increasing")
        selection, sections = SEL_INDEXED, [encode_indices(idx, msg.d)]
    else:
        selection, sections = SEL_ALL, []
        require(msg.n == msg.d, Reason.COUNT_MISMATCH, f"a dense message carries d={msg.d} values, not {msg.n}")
    kind, value_sections = _encode_values(msg.values, value_layout(layout, coords))
    sections += value_sections
    head = HEADER.pack(MAGIC, VERSION, selection, kind, 0, msg.d, layout.fingerprint(), msg.n, len(sections))
    lengths = b"".join(U32.pack(len(s)) for s in sections)
    body = b"".join([head, lengths, *sections])
    return body + CRC.pack(zlib.crc32(body))


def _finite(t: torch.Tensor, what: str) -> None:
    require(bool(torch.isfinite(t).all()), Reason.NON_FINITE, what)


def _encode_values(values, vlayout: Layout) -> tuple[int, list[bytes]]:
    if isinstance(values, Dense):
        require(values.data.dtype in _FLOAT_KIND, Reason.UNKNOWN_KIND, f"dense dtype {values.data.dtype}")
        _finite(values.data, f"{values.data.dtype} values (an fp16 value above 65504 overflows)")
        kind = _FLOAT_KIND[values.data.dtype]
        data = values.data.contiguous()
        if kind == VAL_BF16:
            data = data.view(torch.int16)
        return kind, [data.numpy().astype(_NUMPY_OF[kind], copy=False).tobytes()]
    if isinstance(values, QSGD):
        s, bucket, n = values.levels, values.bucket, values.n
        require(1 <= s <= MAX_LEVELS and 1 <= bucket <= max(n, 1), Reason.BAD_PARAMETER,
                f"levels={s}, bucket={bucket} for {n} values")
        require(values.norms.numel() == -(-n // bucket), Reason.COUNT_MISMATCH, "one norm per bucket")
        norms32 = values.norms.to(torch.float32)  # what travels, and what the receiver checks
        _check_norms(norms32, s)
        sym = values.symbols.to(torch.int64).numpy()
        require(sym.size == 0 or int(np.abs(sym).max()) <= s, Reason.SYMBOL_OUT_OF_RANGE, f"|symbol| > {s}")
        norms = norms32.numpy().astype("<f4").tobytes()
        if not values.elias:
            width = (2 * s).bit_length()
            return VAL_QSGD, [QSGD_PARAMS.pack(s, bucket), norms, pack_fixed(sym + s, width)]
        nz = np.flatnonzero(sym)
        prefix, mantissa = gamma_encode(np.abs(sym[nz]))
        signs = np.packbits((sym[nz] < 0).astype(np.uint8), bitorder="little").tobytes()
        return VAL_QSGD_ELIAS, [
            QSGD_ELIAS_PARAMS.pack(s, bucket, nz.size), norms, encode_indices(nz, n), signs, prefix, mantissa
        ]
    if isinstance(values, Affine):
        require(1 <= values.bits <= 8, Reason.BAD_PARAMETER, f"affine bits={values.bits}, allowed 1..8")
        qmin, qmax = -(1 << (values.bits - 1)), (1 << (values.bits - 1)) - 1
        n_q, t_q = _affine_counts(vlayout, values.quantize_1d)
        require(values.codes.numel() == n_q and values.scales.numel() == t_q, Reason.COUNT_MISMATCH,
                "affine codes/scales do not match the layout")
        require(values.raw.numel() == vlayout.numel - n_q, Reason.COUNT_MISMATCH, "affine raw values")
        # checked as they travel: fp64 scales, int32 zero points, fp32 raw values
        scales, zp, raw = (values.scales.to(torch.float64), values.zero_points.to(torch.int64),
                           values.raw.to(torch.float32))
        _check_scales(scales, values.bits)
        _finite(raw, "affine raw values")
        require(bool(((zp >= qmin) & (zp <= qmax)).all()), Reason.BAD_PARAMETER, "affine zero point out of range")
        codes = values.codes.to(torch.int64)
        require(codes.numel() == 0 or (int(codes.min()) >= 0 and int(codes.max()) < (1 << values.bits)),
                Reason.SYMBOL_OUT_OF_RANGE, f"affine codes must lie in [0, 2^{values.bits})")
        return VAL_AFFINE, [
            AFFINE_PARAMS.pack(values.bits, int(values.quantize_1d)),
            scales.numpy().astype("<f8").tobytes(),
            zp.to(torch.int32).numpy().astype("<i4").tobytes(),
            pack_fixed(codes.numpy(), values.bits),
            raw.numpy().astype("<f4").tobytes(),
        ]
    raise WireError(Reason.UNKNOWN_KIND, f"payload type {type(values).__name__}")


def _check_norms(norms: torch.Tensor, levels: int) -> None:
    """fp32 QSGD norms: finite, >= 0, and small enough that every value their buckets can
    expand to is finite: fl32(fl32(norm / s) * s), by Message.expand's arithmetic. O(buckets)."""
    _finite(norms, "QSGD norms")
    require(bool((norms >= 0).all()), Reason.BAD_PARAMETER, "QSGD norms must be >= 0")
    over = ~torch.isfinite(qsgd_reach(norms, levels))
    if bool(over.any()):
        b = int(over.nonzero()[0])
        raise WireError(Reason.BAD_PARAMETER, f"QSGD norm {float(norms[b])!r} of bucket {b} expands to inf: "
                                              f"(norm / {levels}) * {levels} overflows fp32")


def _check_scales(scales: torch.Tensor, bits: int) -> None:
    """fp64 affine scales: finite, > 0, and small enough that every value a code can stand
    for is finite: fl32(fl32(scale) * (2^bits - 1)), by Message.expand's arithmetic (the
    scale rounded to fp32 first). O(tensors)."""
    _finite(scales, "affine scales")
    require(bool((scales > 0).all()), Reason.BAD_PARAMETER, "affine scales must be > 0")
    over = ~torch.isfinite(affine_reach(scales, bits))
    if bool(over.any()):
        t = int(over.nonzero()[0])
        raise WireError(Reason.BAD_PARAMETER, f"affine scale {float(scales[t])!r} of quantized tensor {t} expands "
                                              f"to inf: fp32(scale) * {(1 << bits) - 1} overflows fp32")


def _affine_counts(vlayout: Layout, quantize_1d: bool) -> tuple[int, int]:
    """(values quantized, tensors quantized). The tensor count is the same in the layout
    and in every value layout made from it (`value_layout` keeps each tensor's 1-D/N-D kind)."""
    quantized = [e.numel for e in vlayout if affine_quantized(e.ndim, quantize_1d)]
    return sum(quantized), len(quantized)


# ============================================================================ decode


def section_lengths(buf: bytes) -> list[int]:
    """The section length table of a well-formed frame (for reports and benchmarks)."""
    nsec = HEADER.unpack_from(buf)[-1]
    return [U32.unpack_from(buf, HEADER.size + 4 * i)[0] for i in range(nsec)]



def decode(buf: bytes | bytearray | memoryview, layout: Layout) -> Message:
    """Strict inverse of `encode`. Anything malformed raises WireError with its reason, and
    so does a valid message in other bytes than `encode` writes (NOT_CANONICAL).

    Cost: every length and count check comes before the work it guards, and the work is
    O(len(buf)) time and memory, except what the message itself stands for: a QSGD-Elias
    frame's n <= d symbols (2 bytes each, however few are nonzero), and a seeded affine
    frame's index set (torch.randperm(d): O(d) time, 8d bytes), regenerated last."""
    buf = memoryview(bytes(buf)) if not isinstance(buf, bytes) else memoryview(buf)
    size = len(buf)
    require(size >= 4, Reason.TRUNCATED, f"{size} bytes is shorter than the magic")
    require(bytes(buf[:4]) == MAGIC, Reason.BAD_MAGIC, f"got {bytes(buf[:4])!r}")
    require(size >= 5, Reason.TRUNCATED, "no version byte")
    require(buf[4] == VERSION, Reason.BAD_VERSION, f"version {buf[4]}, this decoder reads {VERSION}")
    require(size >= HEADER.size, Reason.TRUNCATED, f"{size} bytes is shorter than the {HEADER.size}-byte header")
    _, _, selection, kind, reserved, d, fingerprint, n, nsec = HEADER.unpack_from(buf)
    table_end = HEADER.size + 4 * nsec
    require(size >= table_end + CRC.size, Reason.TRUNCATED, f"{nsec} section lengths do not fit")
    lengths = [U32.unpack_from(buf, HEADER.size + 4 * i)[0] for i in range(nsec)]
    total = table_end + sum(lengths) + CRC.size
    require(size >= total, Reason.TRUNCATED, f"sections need {total} bytes, message has {size}")
    require(size == total, Reason.TRAILING_BYTES, f"{size - total} bytes after the last section")
    require(zlib.crc32(buf[:-4]) == CRC.unpack_from(buf, size - 4)[0], Reason.BAD_CHECKSUM)

    require(selection in _SEL_SECTIONS, Reason.UNKNOWN_KIND, f"selection kind {selection}")
    require(kind in _VAL_SECTIONS, Reason.UNKNOWN_KIND, f"value kind {kind}")
    require(reserved == 0, Reason.BAD_RESERVED, f"reserved byte is {reserved}")
    require(d == layout.numel, Reason.LAYOUT_MISMATCH, f"message d={d}, layout d={layout.numel}")
    require(fingerprint == layout.fingerprint(), Reason.LAYOUT_MISMATCH, "layout fingerprint differs")
    expected = _SEL_SECTIONS[selection] + _VAL_SECTIONS[kind]
    require(nsec == expected, Reason.SECTION_COUNT, f"{nsec} sections, this kind has {expected}")
    require(n <= d, Reason.COUNT_MISMATCH, f"{n} values for {d} coordinates")

    sections, at = [], table_end
    for length in lengths:
        sections.append(buf[at : at + length])
        at += length

    indices = seed = None
    if selection == SEL_ALL:
        require(n == d, Reason.COUNT_MISMATCH, f"a dense message carries d={d} values, header says {n}")
        vlayout = layout
    elif selection == SEL_INDEXED:
        indices = torch.from_numpy(decode_indices(sections.pop(0), d, n))
        vlayout = value_layout(layout, indices)
    else:
        seed_section = sections.pop(0)
        require(len(seed_section) == U64.size, Reason.LENGTH_MISMATCH, "the seed section is 8 bytes")
        seed = U64.unpack(seed_section)[0]
        vlayout = None  # the coordinates cost O(d) to regenerate: only affine needs them, and only last
    values = _decode_values(kind, sections, n, layout, vlayout)
    if seed is not None and kind == VAL_AFFINE:
        _check_seeded_split(values, layout, seed, d, n)
    return Message(d=d, values=values, indices=indices, seed=seed)


def _check_seeded_split(values: Affine, layout: Layout, seed: int, d: int, n: int) -> None:
    """A seeded affine frame's codes/raw split was read from its section lengths; it must be
    the split of the coordinates the seed stands for. Regenerating them (torch.randperm(d):
    O(d) time, 8d bytes) is the one cost not bounded by the frame's length, so it comes
    after every other check has passed."""
    vlayout = value_layout(layout, seeded_indices(seed, d, n))
    n_q = _affine_counts(vlayout, values.quantize_1d)[0]
    require(values.codes.numel() == n_q, Reason.LENGTH_MISMATCH,
            f"affine codes/raw sections hold {values.codes.numel()}/{values.raw.numel()} values, the seeded "
            f"coordinates need {n_q}/{n - n_q}")


def _array(section, dtype: str, count: int, what: str) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    require(len(section) == count * itemsize, Reason.LENGTH_MISMATCH,
            f"{what}: {count} x {itemsize} bytes expected, got {len(section)}")
    return np.frombuffer(section, dtype=dtype).copy()


def _decode_values(kind: int, sections: list, n: int, layout: Layout, vlayout: Layout | None):
    """The values, every check done. `vlayout` is the values' layout, or None for seeded
    coordinates not regenerated yet (then affine takes its codes/raw split from the
    section lengths and the caller checks it against the coordinates afterwards)."""
    if kind in _KIND_FLOAT:
        arr = torch.from_numpy(_array(sections[0], _NUMPY_OF[kind], n, "values"))
        data = arr.view(torch.bfloat16) if kind == VAL_BF16 else arr.to(_KIND_FLOAT[kind])
        _finite(data, "decoded values")
        return Dense(data)
    if kind in (VAL_QSGD, VAL_QSGD_ELIAS):
        params = QSGD_ELIAS_PARAMS if kind == VAL_QSGD_ELIAS else QSGD_PARAMS
        require(len(sections[0]) == params.size, Reason.LENGTH_MISMATCH, "QSGD parameter section")
        s, bucket, *rest = params.unpack(sections[0])
        # A bucket longer than the values would only inflate the receiver's work: refused.
        require(1 <= s <= MAX_LEVELS and 1 <= bucket <= max(n, 1), Reason.BAD_PARAMETER,
                f"levels={s}, bucket={bucket} for {n} values")
        norms = torch.from_numpy(_array(sections[1], "<f4", -(-n // bucket), "QSGD norms"))
        _check_norms(norms, s)
        if kind == VAL_QSGD:
            codes = unpack_fixed(sections[2], n, (2 * s).bit_length())
            require(codes.size == 0 or int(codes.max()) <= 2 * s, Reason.SYMBOL_OUT_OF_RANGE, f"code > {2 * s}")
            sym = (codes.astype(np.int32) - s).astype(np.int16)
        else:
            (m,) = rest
            require(m <= n, Reason.COUNT_MISMATCH, f"{m} nonzero symbols of {n}")
            nz = decode_indices(sections[2], n, m)
            require(len(sections[3]) == nbytes_for(m), Reason.LENGTH_MISMATCH, "QSGD sign bits")
            sign_bits = np.unpackbits(np.frombuffer(sections[3], dtype=np.uint8), bitorder="little")
            require(not sign_bits[m:].any(), Reason.BAD_PADDING, "sign bits after the last symbol")
            mag = gamma_decode(sections[4], sections[5], m)
            require(m == 0 or int(mag.max()) <= s, Reason.SYMBOL_OUT_OF_RANGE, f"level > {s}")
            # The one allocation not bounded by the frame's length: n symbols, 2 bytes each,
            # most of them 0 (m = 0 of n takes a few bytes). n <= d, the receiver's own size.
            sym = np.zeros(n, dtype=np.int16)
            mag16 = mag.astype(np.int16)
            sym[nz] = np.where(sign_bits[:m] == 1, -mag16, mag16)
        return QSGD(torch.from_numpy(sym), norms, levels=s, bucket=bucket, elias=kind == VAL_QSGD_ELIAS)
    # VAL_AFFINE
    require(len(sections[0]) == AFFINE_PARAMS.size, Reason.LENGTH_MISMATCH, "affine parameter section")
    bits, flags = AFFINE_PARAMS.unpack(sections[0])
    require(1 <= bits <= 8, Reason.BAD_PARAMETER, f"affine bits={bits}, allowed 1..8")
    require(flags in (0, 1), Reason.BAD_RESERVED, f"affine flags {flags}")
    quantize_1d = bool(flags)
    t_q = _affine_counts(layout, quantize_1d)[1]  # the same in every value layout
    scales = torch.from_numpy(_array(sections[1], "<f8", t_q, "affine scales"))
    _check_scales(scales, bits)
    zp = torch.from_numpy(_array(sections[2], "<i4", t_q, "affine zero points"))
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    require(bool(((zp >= qmin) & (zp <= qmax)).all()), Reason.BAD_PARAMETER, "affine zero point out of range")
    if vlayout is not None:
        n_q = _affine_counts(vlayout, quantize_1d)[0]
    else:  # seeded: n_q from the section lengths now, checked against the coordinates last
        raw_bytes = len(sections[4])
        require(raw_bytes % 4 == 0 and raw_bytes // 4 <= n, Reason.LENGTH_MISMATCH,
                f"affine raw values: {raw_bytes} bytes is not a whole number of at most {n} fp32 values")
        n_q = n - raw_bytes // 4
    codes = torch.from_numpy(unpack_fixed(sections[3], n_q, bits).astype(np.uint8))
    raw = torch.from_numpy(_array(sections[4], "<f4", n - n_q, "affine raw values"))
    _finite(raw, "affine raw values")
    return Affine(codes, scales, zp, raw, bits=bits, quantize_1d=quantize_1d)
