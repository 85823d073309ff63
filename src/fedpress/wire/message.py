"""Typed payloads: what a codec means to send, before it becomes bytes.

A `Message` says which coordinates of a d-vector it carries (all of them, an explicit
sorted index set, or a seed from which both sides regenerate the index set) and their
values in one of three forms: `Dense` (fp32/fp16/bf16), `QSGD` (signed levels + one
norm per bucket) or `Affine` (min-max b-bit codes + per-tensor scale and zero point).

`Message.expand(layout)` is the receiver's decode: it needs only the message and the
layout, never the codec that made it, so a server can decode any client's update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedpress.layout import Layout

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True, eq=False)
class Dense:
    """Values as floats; the dtype is the wire precision."""

    data: torch.Tensor  # (n,) float32 | float16 | bfloat16

    @property
    def n(self) -> int:
        return self.data.numel()

    def dequantize(self, value_layout: Layout) -> torch.Tensor:
        return self.data.to(torch.float32)


@dataclass(frozen=True, eq=False)
class QSGD:
    """QSGD (Alistarh et al. 2017): value j of bucket b is norms[b] * symbols[j] / levels."""

    symbols: torch.Tensor  # (n,) int16 in [-levels, levels]
    norms: torch.Tensor  # (ceil(n / bucket),) float32, >= 0
    levels: int
    bucket: int
    elias: bool = False  # wire coding of the symbols: bit-packed (False) or Elias-gamma (True)

    @property
    def n(self) -> int:
        return self.symbols.numel()

    def dequantize(self, value_layout: Layout) -> torch.Tensor:
        step = qsgd_step(self.norms, self.levels)[torch.arange(self.n) // self.bucket]  # (n,) norm of its bucket / s
        return step * self.symbols.to(torch.float32)


def qsgd_step(norms: torch.Tensor, levels: int) -> torch.Tensor:
    """The value of one level in each bucket, fp32, exactly as `QSGD.dequantize` computes it."""
    return norms / levels


def qsgd_reach(norms: torch.Tensor, levels: int) -> torch.Tensor:
    """The largest |value| each bucket can expand to: fl32(fl32(norm / s) * s), the symbol
    at ±s, by `QSGD.dequantize`'s own arithmetic. Values grow with |symbol| (and with the
    norm), so the bucket expands to finite values for every symbol iff this is finite."""
    return qsgd_step(norms, levels) * float(levels)


def affine_quantized(entry_ndim: int, quantize_1d: bool) -> bool:
    """FLSim's channel quantizes only tensors with ndim > 1 (spec §1.5); the rest go as fp32."""
    return entry_ndim > 1 or quantize_1d


@dataclass(frozen=True, eq=False)
class Affine:
    """Min-max affine codes per tensor (spec §1.5): value = (code + qmin - zero_point) * scale."""

    codes: torch.Tensor  # (n_q,) uint8 in [0, 2^bits): q - qmin of the quantized tensors, in order
    scales: torch.Tensor  # (T_q,) float64, one per quantized tensor
    zero_points: torch.Tensor  # (T_q,) int32 in [qmin, qmax]
    raw: torch.Tensor  # (n_raw,) float32: the tensors sent unquantized, in order
    bits: int
    quantize_1d: bool = False

    @property
    def n(self) -> int:
        return self.codes.numel() + self.raw.numel()

    def dequantize(self, value_layout: Layout) -> torch.Tensor:
        qmin = -(1 << (self.bits - 1))
        scales = affine_scale32(self.scales)  # (T_q,)
        out = torch.empty(value_layout.numel, dtype=torch.float32)
        q_at = raw_at = t = 0
        for e in value_layout:
            if affine_quantized(e.ndim, self.quantize_1d):
                codes = self.codes[q_at : q_at + e.numel].to(torch.int32) + qmin
                scale = scales[t]
                out[e.offset : e.stop] = (codes - self.zero_points[t]).to(torch.float32) * scale
                q_at, t = q_at + e.numel, t + 1
            else:
                out[e.offset : e.stop] = self.raw[raw_at : raw_at + e.numel]
                raw_at += e.numel
        return out


def affine_scale32(scales: torch.Tensor) -> torch.Tensor:
    """The fp64 scales as `Affine.dequantize` multiplies with them: rounded to fp32."""
    return scales.to(torch.float32)


def affine_reach(scales: torch.Tensor, bits: int) -> torch.Tensor:
    """The largest |value| each quantized tensor can expand to: fl32(fl32(scale) * (2^bits - 1)),
    since |code + qmin - zero_point| <= 2^bits - 1 for every code and zero point in range.
    Finite iff every value the tensor's codes can stand for is finite."""
    return affine_scale32(scales) * float((1 << bits) - 1)


Values = Dense | QSGD | Affine


@dataclass(frozen=True, eq=False)
class Message:
    """A d-vector as sent: which coordinates, and their values."""

    d: int
    values: Values
    indices: torch.Tensor | None = None  # (n,) int64, strictly increasing, in [0, d)
    seed: int | None = None  # seeded random-k: the index set is regenerated from it, not sent

    def __post_init__(self):
        if self.indices is not None and self.seed is not None:
            raise ValueError("Message: give explicit indices or a seed, not both")

    @property
    def n(self) -> int:
        """Number of values carried."""
        return self.values.n

    def coordinates(self) -> torch.Tensor | None:
        """The coordinates the values belong to (None: all d, in order)."""
        if self.seed is not None:
            return seeded_indices(self.seed, self.d, self.n)
        return self.indices

    def expand(self, layout: Layout) -> torch.Tensor:
        """The receiver's decode: the fp32 d-vector this message stands for."""
        coords = self.coordinates()
        values = self.values.dequantize(value_layout(layout, coords))  # (n,)
        if coords is None:
            return values
        out = torch.zeros(self.d, dtype=torch.float32)
        out[coords] = values
        return out

    def same_as(self, other: Message) -> bool:
        """Bit-for-bit equality of everything the message carries (for round-trip checks)."""
        if type(self.values) is not type(other.values) or self.d != other.d or self.seed != other.seed:
            return False
        if (self.indices is None) != (other.indices is None):
            return False
        if self.indices is not None and not torch.equal(self.indices, other.indices):
            return False
        return _values_equal(self.values, other.values)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:  # compare bit patterns so that -0.0 != 0.0
        width = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
        return torch.equal(a.view(width), b.view(width))
    return torch.equal(a, b)


def _values_equal(a: Values, b: Values) -> bool:
    if isinstance(a, Dense):
        return _bits_equal(a.data, b.data)
    if isinstance(a, QSGD):
        return (a.levels, a.bucket, a.elias) == (b.levels, b.bucket, b.elias) and _bits_equal(
            a.symbols, b.symbols
        ) and _bits_equal(a.norms, b.norms)
    return (
        (a.bits, a.quantize_1d) == (b.bits, b.quantize_1d)
        and _bits_equal(a.codes, b.codes)
        and _bits_equal(a.scales, b.scales)
        and _bits_equal(a.zero_points, b.zero_points)
        and _bits_equal(a.raw, b.raw)
    )


def seeded_indices(seed: int, d: int, k: int) -> torch.Tensor:
    """The k coordinates a seeded random-k message stands for; sender and receiver agree.

    A permutation from a generator seeded with `seed`, first k, sorted. Only the 8-byte
    seed crosses the wire.
    """
    g = torch.Generator()
    g.manual_seed(int(seed))
    return torch.randperm(d, generator=g)[:k].sort().values


def value_layout(layout: Layout, coords: torch.Tensor | None) -> Layout:
    """The layout of the carried values: the full layout, or, for a sparse message, one
    segment per tensor holding the coordinates selected from it.

    A segment keeps whether its tensor was a matrix (ndim > 1), so a per-tensor quantizer
    chained after a selector (`chain(top_k, minmax_affine)`) treats weights and biases
    as it would without the selection.
    """
    if coords is None:
        return layout
    bounds = torch.searchsorted(coords, layout.offsets())  # (T + 1,)
    counts = (bounds[1:] - bounds[:-1]).tolist()
    return Layout.from_shapes(
        [(e.name, (c,) if e.ndim <= 1 else (1, c)) for e, c in zip(layout, counts, strict=True)]
    )
