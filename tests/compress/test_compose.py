import pytest
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
    top_k,
)
from fedpress.rng import derive
from tests.compress.contract import LAYOUT, CodecContract, inputs


class TestChain(CodecContract):
    codecs = [
        chain(top_k(0.1), fp16()),
        chain(top_k(0.1, scope="tensor"), bf16()),
        chain(top_k(0.2), qsgd(7)),
        chain(random_k(0.3, unbiased=True), qsgd(3, 16)),
        chain(top_k(0.3), minmax_affine(4)),
        chain(ema_threshold(), fp16()),
        chain(random_k(0.5, seeded=True), minmax_affine(8, quantize_1d=True)),
        chain(fp32(), fp16()),
    ]


class TestErrorFeedback(CodecContract):
    codecs = [
        error_feedback(chain(top_k(0.05), fp16())),
        error_feedback(top_k(k=2)),
        error_feedback(chain(ema_threshold(), fp16())),
        error_feedback(random_k(0.1)),
        error_feedback(qsgd(2)),
    ]


def test_chain_quantizes_only_the_selected_values():
    x = inputs()["gauss"]
    msg, _ = chain(top_k(0.1), fp16()).encode(x, LAYOUT, chain(top_k(0.1), fp16()).init(LAYOUT))
    ref, _ = top_k(0.1).encode(x, LAYOUT, None)
    assert torch.equal(msg.indices, ref.indices)
    assert torch.equal(msg.values.data, ref.values.data.half())


def test_chain_keeps_per_tensor_quantization_after_selection():
    codec = chain(top_k(0.5), minmax_affine(8))
    msg, _ = codec.encode(inputs()["gauss"], LAYOUT, codec.init(LAYOUT))
    assert msg.values.scales.numel() == 2  # conv and fc weights; the biases travel as fp32


def test_only_the_first_codec_may_keep_state():
    with pytest.raises(ValueError, match="keeps state"):
        chain(top_k(0.5), error_feedback(fp16()))


def test_only_the_first_codec_may_select():
    codec = chain(fp16(), top_k(0.1))
    with pytest.raises(ValueError, match="only the first codec may select"):
        codec.encode(inputs()["gauss"], LAYOUT, codec.init(LAYOUT))


@pytest.mark.parametrize("codec", TestErrorFeedback.codecs[:4], ids=lambda c: c.name)
def test_error_feedback_invariant_is_exact(codec):
    """input + old residual == decoded + new residual, bit for bit, round after round."""
    state = codec.init(LAYOUT)
    g = torch.Generator().manual_seed(0)
    for step in range(20):
        x = torch.randn(LAYOUT.numel, generator=g) * 10 ** (step % 3)
        u = x + state.residual
        msg, state = codec.encode(x, LAYOUT, state, derive(0, "ef", step))
        assert torch.equal(codec.decode(msg, LAYOUT) + state.residual, u)


def test_error_feedback_feeds_back_quantization_error_too():
    codec = error_feedback(qsgd(2))
    state = codec.init(LAYOUT)
    x = inputs()["gauss"]
    msg, state = codec.encode(x, LAYOUT, state, derive(0, "t"))
    torch.testing.assert_close(codec.decode(msg, LAYOUT) + state.residual, x, rtol=0, atol=1e-6)
    assert state.residual.abs().sum() > 0


def test_error_feedback_delivers_everything_eventually():
    """A constant input: the receiver gets T*x minus a residual that stays bounded in T."""
    layout = Layout.flat(1000)
    codec = error_feedback(chain(top_k(0.01), fp16()))
    state = codec.init(layout)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    received = torch.zeros(1000)
    residual_norms = []
    for _ in range(600):
        msg, state = codec.encode(x, layout, state)
        received += codec.decode(msg, layout)
        residual_norms.append(state.residual.norm().item())
    torch.testing.assert_close(received + state.residual, 600 * x, rtol=1e-4, atol=1e-3)
    # without feedback 99% of x would be lost every round; with it the residual does not
    # grow with T (it would double from round 300 to 600 if it did)
    assert max(residual_norms[300:]) < 1.3 * max(residual_norms[150:300])
    assert state.residual.norm() < 0.1 * (600 * x).norm()


def test_declared_promises_compose():
    assert chain(fp32(), fp16()).promises.relative_error == 2.0**-11
    unbiased = chain(random_k(0.5, unbiased=True), qsgd(4)).promises
    assert unbiased.unbiased and unbiased.variance(LAYOUT) > 1.0
    contraction = chain(top_k(0.1), fp16()).promises.contraction(LAYOUT)
    assert 0 < contraction < top_k(0.1).promises.contraction(LAYOUT)
