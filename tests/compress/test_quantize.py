import math

import pytest
import torch

from fedpress import Layout, wire
from fedpress.compress import minmax_affine, qsgd
from fedpress.rng import derive
from tests.compress.contract import CodecContract


class TestQSGD(CodecContract):
    codecs = [qsgd(1), qsgd(4), qsgd(15, 64), qsgd(127, 32), qsgd(2, 16, elias=True), qsgd(300, elias=True)]


class TestMinMaxAffine(CodecContract):
    codecs = [minmax_affine(8), minmax_affine(4), minmax_affine(2, quantize_1d=True), minmax_affine(1)]


def test_qsgd_symbols_stay_in_the_alphabet_and_levels_bracket_the_value():
    layout = Layout.flat(5000)
    x = torch.randn(5000)
    msg, _ = qsgd(7, 100).encode(x, layout, None, derive(0, "t"))
    sym, norms = msg.values.symbols.float(), msg.values.norms
    assert sym.abs().max() <= 7
    a = 7 * x.abs() / norms.repeat_interleave(100)  # exact level position
    assert bool(((sym.abs() == a.floor()) | (sym.abs() == a.floor() + 1)).all())
    assert bool((torch.sign(sym) * torch.sign(x) >= 0).all())


@pytest.mark.parametrize("levels,bucket", [(1, 64), (4, 64), (4, 1024), (16, 256)])
def test_qsgd_variance_per_bucket_is_within_the_paper_bound(levels, bucket):
    """E||Q(v) - v||^2 <= min(B/s^2, sqrt(B)/s) ||v||^2, checked bucket by bucket."""
    layout = Layout.flat(4 * bucket)
    x = torch.randn(4 * bucket, generator=torch.Generator().manual_seed(3)) ** 3
    codec = qsgd(levels, bucket)
    errs = torch.stack([
        (codec.decode(codec.encode(x, layout, None, derive(s, "q"))[0], layout) - x).square().view(4, bucket).sum(1)
        for s in range(800)
    ])  # (draws, buckets)
    bound = min(bucket / levels**2, math.sqrt(bucket) / levels) * x.view(4, bucket).square().sum(1)
    assert bool((errs.mean(0) <= bound + 4 * errs.std(0) / 800**0.5).all())


def test_qsgd_elias_coding_carries_the_same_values_in_fewer_bytes_when_sparse():
    layout = Layout.flat(100_000)
    x = torch.randn(100_000)
    packed, _ = qsgd(1).encode(x, layout, None, derive(0, "t"))
    elias, _ = qsgd(1, elias=True).encode(x, layout, None, derive(0, "t"))
    assert torch.equal(packed.values.symbols, elias.values.symbols)
    a, b = wire.encode(packed, layout), wire.encode(elias, layout)
    assert torch.equal(wire.decode(a, layout).expand(layout), wire.decode(b, layout).expand(layout))
    assert len(b) < len(a)  # s = 1 with one bucket: most symbols are 0


def test_qsgd_packs_symbols_in_ceil_log2_2s_plus_1_bits():
    layout = Layout.flat(8000)
    msg, _ = qsgd(15).encode(torch.randn(8000), layout, None, derive(0, "t"))
    lengths = wire.section_lengths(wire.encode(msg, layout))
    assert lengths == [6, 4, 8000 * 5 // 8]  # params, one norm, 5-bit symbols


# FLSim's SimpleConvNet for CIFAR-10 (spec §1.5): 31,594 parameters
SIMPLE_CONVNET = Layout.from_shapes([
    ("conv1.weight", (32, 3, 3, 3)), ("conv1.bias", (32,)),
    ("conv2.weight", (32, 32, 3, 3)), ("conv2.bias", (32,)),
    ("conv3.weight", (32, 32, 3, 3)), ("conv3.bias", (32,)),
    ("conv4.weight", (32, 32, 3, 3)), ("conv4.bias", (32,)),
    ("gn.weight", (32,)), ("gn.bias", (32,)),
    ("fc.weight", (10, 288)), ("fc.bias", (10,)),
])


@pytest.mark.parametrize("bits,flsim_bytes", [(8, 32_260), (4, 16_564), (2, 8_716)])
def test_minmax_affine_reproduces_the_flsim_message_sizes(bits, flsim_bytes):
    """The authors' spreadsheets give these sizes; our payload sections add up to them."""
    assert SIMPLE_CONVNET.numel == 31_594
    x = torch.randn(SIMPLE_CONVNET.numel, generator=torch.Generator().manual_seed(0)) * 0.1
    msg, _ = minmax_affine(bits).encode(x, SIMPLE_CONVNET, None)
    params, *payload = wire.section_lengths(wire.encode(msg, SIMPLE_CONVNET))
    assert params == 2 and sum(payload) == flsim_bytes


def test_minmax_affine_matches_pytorch_per_tensor_quantization():
    """Reference: torch's MinMaxObserver + quantize_per_tensor, the code FLSim builds on."""
    from torch.ao.quantization.observer import MinMaxObserver

    layout = Layout.from_shapes({"w": (20, 30), "b": (30,)})
    x = torch.randn(layout.numel, generator=torch.Generator().manual_seed(5)) + 0.3
    msg, _ = minmax_affine(8).encode(x, layout, None)
    w = x[:600]
    obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    obs(w)
    scale, zp = obs.calculate_qparams()
    ref = torch.quantize_per_tensor(w, float(scale), int(zp), torch.qint8)
    assert msg.values.scales[0].item() == pytest.approx(float(scale), rel=1e-6)
    assert msg.values.zero_points[0].item() == int(zp)
    assert torch.equal(msg.values.codes.to(torch.int32) - 128, ref.int_repr().to(torch.int32))
    # the 1-D bias travels as fp32, untouched
    assert torch.equal(msg.expand(layout)[600:], x[600:])


def test_minmax_affine_error_is_at_most_half_a_step():
    layout = Layout.from_shapes({"w": (50, 40)})
    x = torch.randn(2000)
    for bits in (2, 4, 8):
        msg, _ = minmax_affine(bits).encode(x, layout, None)
        step = msg.values.scales[0].item()
        assert (msg.expand(layout) - x).abs().max() <= step / 2 * (1 + 1e-5)


def test_quantizers_reject_bad_hyperparameters():
    with pytest.raises(ValueError, match="levels"):
        qsgd(0)
    with pytest.raises(ValueError, match="bucket"):
        qsgd(4, 0)
    with pytest.raises(ValueError, match="bits"):
        minmax_affine(9)


@pytest.mark.parametrize("bits", range(1, 9))
def test_minmax_affine_at_the_float32_edge_decodes_finitely_or_is_refused_at_the_sender(bits):
    """Tensors spanning up to the float32 maximum: the receiver never gets an infinite value."""
    layout = Layout.from_shapes({"w": (2, 3)})
    f32_max = torch.finfo(torch.float32).max
    for top in (f32_max, f32_max / 2, f32_max / 2**bits, 1e38, 3e37):
        for x in (torch.tensor([0.0, top, top / 3, 1.0, -1.0, 0.5]), torch.tensor([-top / 2, top / 2, 0, 0, 1, 2])):
            msg, _ = minmax_affine(bits).encode(x, layout, None)
            try:
                data = wire.encode(msg, layout)
            except wire.WireError as e:
                assert e.reason in (wire.Reason.NON_FINITE, wire.Reason.BAD_PARAMETER)
                continue
            assert bool(torch.isfinite(wire.decode(data, layout).expand(layout)).all()), (top, x)


@pytest.mark.parametrize("levels", [1, 3, 25, 31, 127, 32767])
def test_qsgd_of_the_largest_inputs_decodes_finitely_or_is_refused_at_the_sender(levels):
    """torch's fp32 norm overflows long before the float32 maximum (|x| ~ 1.8e19), so a
    codec's norms stay far from the edge; the wire refuses an infinite norm by name."""
    layout = Layout.flat(4)
    for top in (1e19, 1.8e19, 3e19, 1e38):
        msg, _ = qsgd(levels).encode(torch.tensor([top, -top / 2, 0.0, 1.0]), layout, None, derive(0, "edge"))
        try:
            data = wire.encode(msg, layout)
        except wire.WireError as e:
            assert e.reason is wire.Reason.NON_FINITE
            continue
        assert bool(torch.isfinite(wire.decode(data, layout).expand(layout)).all())
