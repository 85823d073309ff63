import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpress import Layout, wire
from fedpress.compress import ema_threshold, random_k, threshold, top_k, top_k_indices
from fedpress.compress.select import kth_largest
from fedpress.rng import derive
from tests.compress.contract import LAYOUT, CodecContract, inputs


class TestTopK(CodecContract):
    codecs = [top_k(0.1), top_k(k=1), top_k(0.05, scope="tensor"), top_k(k=3, scope="tensor"), top_k(1.0)]


class TestRandomK(CodecContract):
    codecs = [random_k(0.1), random_k(k=20, seeded=True), random_k(0.2, unbiased=True),
              random_k(0.1, seeded=True, unbiased=True)]


class TestThreshold(CodecContract):
    codecs = [threshold(0.5), threshold(0.0)]


class TestEMAThreshold(CodecContract):
    codecs = [
        ema_threshold(),
        ema_threshold(0.5, "rms", 1.5),
        ema_threshold(0.0, "std"),
        ema_threshold(0.9, "max_abs", 0.5),
    ]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300_000), st.floats(1e-5, 0.5), st.integers(0, 2**31))
def test_kth_largest_equals_torch_topk(d, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, generator=g).abs()
    k = max(1, int(ratio * d))
    assert kth_largest(a, k) == torch.topk(a, k).values[-1]


def test_kth_largest_is_exact_when_the_sample_misleads():
    # the strided sample sees only zeros; the large values sit between sample points
    a = torch.zeros(200_000)
    a[1::100] = torch.arange(1, 2001, dtype=torch.float32)
    assert kth_largest(a, 1000) == torch.topk(a, 1000).values[-1]
    # the sample sees only the largest values: fewer than k candidates, so the full topk runs
    b = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    b[::100] += 10.0
    assert int((b >= torch.topk(b[::100], 36).values.min()).sum()) < 1000  # the sample's threshold is too high
    assert kth_largest(b, 1000) == torch.topk(b, 1000).values[-1]


def test_top_k_keeps_exactly_k_with_ties_broken_by_lower_index():
    a = torch.tensor([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.5])
    assert top_k_indices(a, 3).tolist() == [1, 2, 3]
    assert top_k_indices(a, 4).tolist() == [1, 2, 3, 4]
    assert top_k_indices(torch.zeros(10), 4).tolist() == [0, 1, 2, 3]


def test_top_k_count_rule_is_max_one_ceil_ratio_d():
    layout = Layout.from_shapes({"a": (1000,), "b": (7,), "c": (3, 3)})
    x = torch.randn(layout.numel, generator=torch.Generator().manual_seed(0))
    msg, _ = top_k(0.01).encode(x, layout, None)
    assert msg.n == math.ceil(0.01 * layout.numel)
    msg, _ = top_k(0.01, scope="tensor").encode(x, layout, None)
    counts = [((msg.indices >= e.offset) & (msg.indices < e.stop)).sum().item() for e in layout]
    assert counts == [10, 1, 1]
    hundred = Layout.flat(100)
    assert top_k(0.07).encode(torch.randn(100), hundred, None)[0].n == 7  # not ceil(7.000000000000001)


def test_top_k_contraction_is_tight_on_equal_magnitudes():
    # when every |x_j| is equal, ||x - C(x)||^2 = (1 - k/d)||x||^2 exactly
    layout = Layout.flat(100)
    x = torch.ones(100)
    err = (top_k(k=10).decode(top_k(k=10).encode(x, layout, None)[0], layout) - x).square().sum()
    assert err == pytest.approx(0.9 * 100)


def test_seeded_random_k_sends_only_the_values_and_a_seed():
    layout = Layout.flat(10_000)
    x = torch.randn(10_000)
    plain, _ = random_k(k=100).encode(x, layout, None, derive(0, "t"))
    seeded, _ = random_k(k=100, seeded=True).encode(x, layout, None, derive(0, "t"))
    assert seeded.indices is None and seeded.seed is not None
    size_plain, size_seeded = len(wire.encode(plain, layout)), len(wire.encode(seeded, layout))
    assert size_seeded == size_plain - (len(wire.encode_indices(plain.indices.numpy(), 10_000)) - 8)
    # the receiver regenerates the same coordinates from the seed alone
    back = wire.decode(wire.encode(seeded, layout), layout)
    assert torch.equal(back.expand(layout)[back.coordinates()], x[back.coordinates()])


def test_unbiased_random_k_scales_by_d_over_k():
    layout = Layout.flat(50)
    x = torch.ones(50)
    msg, _ = random_k(k=5, unbiased=True).encode(x, layout, None, derive(0, "t"))
    assert msg.values.data.tolist() == [10.0] * 5


def test_threshold_keeps_at_or_above_tau_and_never_zeros():
    layout = Layout.flat(5)
    x = torch.tensor([0.0, 0.5, -0.49, -0.5, 2.0])
    assert threshold(0.5).encode(x, layout, None)[0].indices.tolist() == [1, 3, 4]
    assert threshold(0.0).encode(x, layout, None)[0].indices.tolist() == [1, 2, 3, 4]


def test_ema_threshold_follows_the_exponential_average_per_tensor():
    layout = Layout.from_shapes({"a": (4,), "b": (2,)})
    codec = ema_threshold(beta=0.5)
    state = codec.init(layout)
    x1 = torch.tensor([1.0, -2.0, 3.0, -4.0, 10.0, 0.0])
    msg, state = codec.encode(x1, layout, state)
    assert state.tau.tolist() == [2.5, 5.0]  # first round: tau = mean |u|
    assert msg.indices.tolist() == [2, 3, 4]
    x2 = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 1.0])
    msg, state = codec.encode(x2, layout, state)
    assert state.tau.tolist() == [0.5 * 2.5 + 0.5 * 0.5, 0.5 * 5.0 + 0.5 * 1.0]  # [1.5, 3.0]
    assert msg.n == 0 and state.seen.tolist() == [2, 2]


def test_ema_threshold_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="statistic"):
        ema_threshold(statistic="median")
    with pytest.raises(ValueError, match="beta"):
        ema_threshold(beta=1.0)


def test_bad_ratios_name_the_codec_and_the_rule():
    with pytest.raises(ValueError, match="top_k.*exactly one"):
        top_k(0.1, k=3)
    with pytest.raises(ValueError, match=r"random_k.*\(0, 1\]"):
        random_k(1.5)
    with pytest.raises(ValueError, match="scope"):
        top_k(0.1, scope="layer")


def test_selection_never_sends_what_it_did_not_pick():
    x = inputs()["gauss"]
    msg, _ = top_k(0.1).encode(x, LAYOUT, None)
    x_hat = msg.expand(LAYOUT)
    kept = x_hat != 0
    assert torch.equal(x_hat[kept], x[kept]) and int(kept.sum()) == msg.n
