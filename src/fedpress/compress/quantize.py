"""Quantizers: every value, in fewer bits. QSGD (stochastic, unbiased) and FLSim's min-max
affine quantizer (deterministic, per tensor), which QAFeL's neural-network runs used."""

from __future__ import annotations

import math

import torch

from fedpress.compress.codec import Codec, Promises, check_input, factory, need_rng, stateless
from fedpress.layout import Layout
from fedpress.wire.frame import MAX_LEVELS
from fedpress.wire.message import QSGD, Affine, Message, affine_quantized


@factory
def qsgd(levels: int, bucket: int | None = None, *, elias: bool = False) -> Codec:
    """QSGD with s = `levels` levels per sign (Alistarh et al. 2017; spec §1.4).

    Each bucket of `bucket` consecutive values (default: the whole vector as one bucket;
    the QSGD paper's experiments use 512) is sent as its L2 norm (fp32) and one symbol
    per value in {-s..s}:
        a_j = s |v_j| / ||v||,  xi_j = floor(a_j) + Bernoulli(a_j - floor(a_j)),
        Q(v)_j = ||v|| sign(v_j) xi_j / s.
    Unbiased, with E||Q(v) - v||^2 <= min(B/s^2, sqrt(B)/s) ||v||^2 per bucket of size B.
    Symbols are bit-packed in ceil(log2(2s+1)) bits, or Elias-gamma coded (elias=True),
    the paper's own coding, which wins when most symbols are 0.
    """
    if not 1 <= int(levels) <= MAX_LEVELS:
        raise ValueError(f"qsgd: levels must be in [1, {MAX_LEVELS}], got {levels}")
    if bucket is not None and int(bucket) < 1:
        raise ValueError(f"qsgd: bucket must be >= 1 (or None for one bucket), got {bucket}")
    s = int(levels)
    name = f"qsgd(levels={s}{f', bucket={bucket}' if bucket else ''}{', elias' if elias else ''})"

    def encode(x: torch.Tensor, layout: Layout, state, rng=None):
        check_input(x, layout, name)
        rng = need_rng(rng, name)
        n = x.numel()
        b = min(int(bucket), max(n, 1)) if bucket else max(n, 1)
        nb = -(-n // b)
        padded = torch.zeros(nb * b)
        padded[:n] = x
        norms = padded.view(nb, b).norm(dim=1)  # (nb,) fp32: exactly what the receiver gets
        step = (norms / s).repeat_interleave(b)[:n]  # (n,) value of one level
        a = torch.where(step > 0, x.abs() / step, torch.zeros_like(x)).clamp_(0, s)  # (n,) in [0, s]
        low = a.floor()
        xi = low + (torch.rand(n, generator=rng) < (a - low)).to(a.dtype)  # stochastic rounding
        symbols = (torch.sign(x) * xi).to(torch.int16)  # (n,)
        return Message(n, QSGD(symbols, norms, levels=s, bucket=b, elias=elias)), state

    def variance(layout: Layout) -> float:
        bsize = min(int(bucket), layout.numel) if bucket else layout.numel
        return min(bsize / s**2, math.sqrt(bsize) / s)

    return Codec(name, stateless, encode, Promises(unbiased=True, variance=variance, stochastic=True))


@factory
def minmax_affine(bits: int, *, quantize_1d: bool = False) -> Codec:
    """FLSim's scalar quantization channel (spec §1.5), reproducible byte for byte.

    Per tensor with ndim > 1 (all tensors if quantize_1d): lo = min(x.min(), 0),
    hi = max(x.max(), 0), scale = max((hi - lo) / (2^b - 1), eps_fp32),
    zero_point = clamp(qmin - round(lo / scale)), q = clamp(round(x / scale) + zero_point),
    with qmin = -2^(b-1), qmax = 2^(b-1) - 1 and round-half-to-even. Deterministic.
    The other tensors (biases, norm parameters) travel as fp32.
    On the wire: b bits per code, an fp64 scale and an int32 zero point per tensor.
    """
    if not 1 <= int(bits) <= 8:
        raise ValueError(f"minmax_affine: bits must be in 1..8, got {bits}")
    b = int(bits)
    qmin, qmax = -(1 << (b - 1)), (1 << (b - 1)) - 1
    eps = torch.finfo(torch.float32).eps
    name = f"minmax_affine({b} bits{', 1-D too' if quantize_1d else ''})"

    def encode(x: torch.Tensor, layout: Layout, state, rng=None):
        check_input(x, layout, name)
        codes, scales, zero_points, raw = [], [], [], []
        for e in layout:
            v = x[e.offset : e.stop]
            if not affine_quantized(e.ndim, quantize_1d):
                raw.append(v)
                continue
            lo = torch.clamp(v.min(), max=0.0) if e.numel else torch.tensor(0.0)
            hi = torch.clamp(v.max(), min=0.0) if e.numel else torch.tensor(0.0)
            scale = torch.clamp((hi - lo) / float(2**b - 1), min=eps)  # fp32
            zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
            q = torch.clamp(torch.round(v / scale) + zp, qmin, qmax)  # (numel,)
            codes.append((q - qmin).to(torch.uint8))
            scales.append(scale.to(torch.float64))
            zero_points.append(zp)
        values = Affine(
            codes=torch.cat(codes) if codes else torch.zeros(0, dtype=torch.uint8),
            scales=torch.stack(scales) if scales else torch.zeros(0, dtype=torch.float64),
            zero_points=torch.stack(zero_points) if zero_points else torch.zeros(0, dtype=torch.int32),
            raw=torch.cat(raw) if raw else torch.zeros(0),
            bits=b,
            quantize_1d=quantize_1d,
        )
        return Message(x.numel(), values), state

    return Codec(name, stateless, encode, Promises())
