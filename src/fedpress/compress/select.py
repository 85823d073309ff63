"""Selection codecs: send some coordinates exactly (fp32) and drop the rest.

Chain a quantizer after one (`chain(top_k(0.01), fp16())`) to send the kept values in
fewer bits; wrap one in `error_feedback` to keep what was dropped for later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedpress.compress.codec import (
    Codec,
    Promises,
    check_input,
    check_ratio,
    count_for,
    factory,
    need_rng,
    stateless,
)
from fedpress.layout import Layout
from fedpress.wire.message import Dense, Message, seeded_indices


def sparse_message(x: torch.Tensor, idx: torch.Tensor) -> Message:
    """The kept coordinates of x with their exact fp32 values."""
    return Message(x.numel(), Dense(x[idx]), indices=idx)


# ============================================================================ top-k


def kth_largest(a: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of a 1-D tensor (1 <= k <= numel), exactly.

    torch.topk on millions of entries is the slow part of top-k. When k is small we first
    find a candidate threshold from a strided 1% sample, keep the entries at or above it
    (a few times k of them), and run topk on those only. If the candidates turn out to
    be fewer than k (an unlucky sample) we fall back to the full topk: the result is
    exact either way, only the speed depends on the sample.
    """
    d = a.numel()
    if d >= 1 << 16 and 16 * k <= d:
        stride = 100
        sample = a[::stride]  # (ceil(d / stride),)
        m = sample.numel()
        expected = m * k / d
        rank = math.ceil(1.5 * expected + 4.0 * math.sqrt(expected) + 8)
        if rank < m:
            low = torch.topk(sample, rank, sorted=False).values.min()
            candidates = a[a >= low]
            if candidates.numel() >= k:
                return torch.topk(candidates, k, sorted=False).values.min()
    return torch.topk(a, k, sorted=False).values.min()


def top_k_indices(a: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of the k largest entries of a; ties broken by lower index [spec §1.2]."""
    d = a.numel()
    if k >= d:
        return torch.arange(d)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    v = kth_largest(a, k)
    above = a > v
    need = k - int(above.sum())
    if need > 0:
        ties = (a == v).nonzero().squeeze(1)[:need]
        above[ties] = True
    return above.nonzero().squeeze(1)


def flare_indices(a: torch.Tensor, ratio: float) -> torch.Tensor:
    """FLARE's reference selection (spec §1.2): k = round(size * ratio), threshold = the
    (k+2)-th largest |x|, keep the entries strictly above it: k + 1 entries when there are
    no ties, at least one per tensor however small the ratio."""
    n = a.numel()
    k = round(n * ratio)
    if k + 2 > n:
        return torch.arange(n)
    return (a > kth_largest(a, k + 2)).nonzero().squeeze(1)


@factory
def top_k(ratio: float | None = None, *, k: int | None = None, scope: str = "global",
          compat: str | None = None) -> Codec:
    """Keep the k coordinates of largest magnitude: over the whole vector (scope="global")
    or k_t = max(1, ceil(ratio * d_t)) in every tensor of the layout (scope="tensor").
    compat="flare" reproduces the FLARE reference code's per-tensor rule (`flare_indices`).

    Contraction: ||x - C(x)||^2 <= (1 - k/d) ||x||^2; per tensor, with min_t k_t / d_t.
    """
    check_ratio("top_k", ratio, k)
    if scope not in ("global", "tensor"):
        raise ValueError(f"top_k: scope must be 'global' or 'tensor', got {scope!r}")
    if compat not in (None, "flare") or (compat == "flare" and (scope != "tensor" or ratio is None)):
        raise ValueError("top_k: compat='flare' is the reference FLARE rule: per tensor, with a ratio")
    name = f"top_k({ratio if k is None else f'k={k}'}{', per tensor' if scope == 'tensor' else ''}" \
           f"{', flare rule' if compat else ''})"

    def select(a: torch.Tensor, n: int) -> torch.Tensor:
        return flare_indices(a, ratio) if compat == "flare" else top_k_indices(a, count_for(n, ratio, k))

    def encode(x: torch.Tensor, layout: Layout, state, rng=None):
        check_input(x, layout, name)
        a = x.abs()
        if scope == "global":
            idx = top_k_indices(a, count_for(x.numel(), ratio, k))
        else:
            parts = [select(a[e.offset : e.stop], e.numel) + e.offset for e in layout]
            idx = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        return sparse_message(x, idx), state

    def contraction(layout: Layout) -> float:
        if scope == "global":
            return count_for(layout.numel, ratio, k) / max(layout.numel, 1)
        return min((count_for(e.numel, ratio, k) / e.numel for e in layout if e.numel), default=1.0)

    # With ties the FLARE rule may keep fewer than k + 1 entries, even none: no contraction.
    return Codec(name, stateless, encode, Promises(contraction=None if compat else contraction))


# ============================================================================ random-k


@factory
def random_k(
    ratio: float | None = None, *, k: int | None = None, seeded: bool = False, unbiased: bool = False
) -> Codec:
    """k coordinates drawn uniformly without replacement.

    seeded=True sends only the values and an 8-byte seed; both sides regenerate the index
    set from it (`fedpress.wire.seeded_indices`). unbiased=True scales the kept values
    by d/k so that E[C(x)] = x (variance d/k - 1); otherwise E||x - C(x)||^2 = (1 - k/d)||x||^2.
    """
    check_ratio("random_k", ratio, k)
    flags = (", seeded" if seeded else "") + (", unbiased" if unbiased else "")
    name = f"random_k({ratio if k is None else f'k={k}'}{flags})"

    def encode(x: torch.Tensor, layout: Layout, state, rng=None):
        check_input(x, layout, name)
        rng = need_rng(rng, name)
        d = x.numel()
        kk = count_for(d, ratio, k)
        scale = d / kk if unbiased and kk else 1.0
        if seeded:
            seed = int(torch.randint(0, 2**63 - 1, (1,), generator=rng))
            idx = seeded_indices(seed, d, kk)
            return Message(d, Dense(x[idx] * scale), seed=seed), state
        idx = torch.randperm(d, generator=rng)[:kk].sort().values
        return Message(d, Dense(x[idx] * scale), indices=idx), state

    def kept(layout: Layout) -> float:
        return count_for(layout.numel, ratio, k) / max(layout.numel, 1)

    if unbiased:
        promises = Promises(unbiased=True, variance=lambda L: 1 / kept(L) - 1, stochastic=True)
    else:
        promises = Promises(expected_contraction=kept, stochastic=True)
    return Codec(name, stateless, encode, promises)


# ============================================================================ thresholds


@factory
def threshold(tau: float) -> Codec:
    """Static threshold: keep the coordinates with |x_j| >= tau (and x_j != 0)."""
    if not tau >= 0:
        raise ValueError(f"threshold: tau must be >= 0, got {tau}")
    name = f"threshold({tau})"

    def encode(x: torch.Tensor, layout: Layout, state, rng=None):
        check_input(x, layout, name)
        a = x.abs()
        idx = ((a >= tau) & (a > 0)).nonzero().squeeze(1)
        return sparse_message(x, idx), state

    return Codec(name, stateless, encode, Promises())


def _mean_abs(v: torch.Tensor) -> torch.Tensor:
    return v.abs().mean()


def _rms(v: torch.Tensor) -> torch.Tensor:
    return v.square().mean().sqrt()


def _std(v: torch.Tensor) -> torch.Tensor:
    return v.std(correction=0)


def _max_abs(v: torch.Tensor) -> torch.Tensor:
    return v.abs().max()


STATISTICS = {"mean_abs": _mean_abs, "rms": _rms, "std": _std, "max_abs": _max_abs}


@dataclass(frozen=True)
class EMAThresholdState:
    """Per-tensor smoothed thresholds tau_l and how many updates each has seen."""

    tau: torch.Tensor  # (T,) float32
    seen: torch.Tensor  # (T,) int64


def tensor_statistics(x: torch.Tensor, layout: Layout, statistic: str) -> torch.Tensor:
    """statistic(x_l) for every tensor l of the layout, shape (T,); 0 for empty tensors."""
    stat = STATISTICS[statistic]
    return torch.stack([stat(x[e.offset : e.stop]) if e.numel else torch.tensor(0.0) for e in layout]) \
        if len(layout) else torch.zeros(0)


def ema_update(state: EMAThresholdState, m: torch.Tensor, beta: float, init: str = "first") -> EMAThresholdState:
    """tau <- beta tau + (1 - beta) m per tensor; the first time tau = m (init="first") or the
    EMA starts from 0 (init="zero", as a third-party FedSparQ re-implementation does)."""
    smoothed = beta * state.tau + (1 - beta) * m
    first = (state.seen == 0) & torch.tensor(init == "first")
    return EMAThresholdState(torch.where(first, m, smoothed), state.seen + 1)


def threshold_indices(x: torch.Tensor, layout: Layout, thresholds: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """Sorted coordinates with |x_j| >= tau_l (> if strict) in their tensor l, never zeros."""
    a, parts = x.abs(), []
    for t, e in enumerate(layout):
        if e.numel == 0:
            continue
        v = a[e.offset : e.stop]
        keep = (v > thresholds[t]) if strict else ((v >= thresholds[t]) & (v > 0))
        parts.append(keep.nonzero().squeeze(1) + e.offset)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


@factory
def ema_threshold(beta: float = 0.9, statistic: str = "mean_abs", factor: float = 1.0, *,
                  init: str = "first", strict: bool = False) -> Codec:
    """FedSparQ's selector (spec §2.2 step 4): a per-tensor threshold smoothed over rounds.

    For every tensor l of the layout:  m_l = statistic(u_l);
        tau_l <- beta * tau_l + (1 - beta) * m_l   (tau_l = m_l the first time)
        keep  { j : |u_lj| >= factor * tau_l, u_lj != 0 }   (> with strict=True)
    The thresholds are the codec's state, returned by encode, kept by the caller.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"ema_threshold: beta must be in [0, 1), got {beta}")
    if statistic not in STATISTICS:
        raise ValueError(f"ema_threshold: statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
    if not factor > 0:
        raise ValueError(f"ema_threshold: factor must be > 0, got {factor}")
    if init not in ("first", "zero"):
        raise ValueError(f"ema_threshold: init must be 'first' or 'zero', got {init!r}")
    name = f"ema_threshold(beta={beta}, {statistic}, factor={factor})"

    def init_state(layout: Layout) -> EMAThresholdState:
        return EMAThresholdState(torch.zeros(len(layout)), torch.zeros(len(layout), dtype=torch.int64))

    def encode(x: torch.Tensor, layout: Layout, state: EMAThresholdState, rng=None):
        check_input(x, layout, name)
        state = ema_update(state, tensor_statistics(x, layout, statistic), beta, init)
        idx = threshold_indices(x, layout, factor * state.tau, strict)
        return sparse_message(x, idx), state

    return Codec(name, init_state, encode, Promises())
