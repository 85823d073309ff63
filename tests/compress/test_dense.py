import pytest
import torch

from fedpress import Layout, wire
from fedpress.compress import bf16, fp16, fp32
from tests.compress.contract import CodecContract


class TestDense(CodecContract):
    codecs = [fp32(), fp16(), bf16()]


def test_fp16_and_bf16_are_two_bytes_a_value():
    layout = Layout.flat(1000)
    x = torch.randn(1000)
    sizes = {c.name: len(wire.encode(c.encode(x, layout, None)[0], layout)) for c in TestDense.codecs}
    assert sizes["fp32"] - sizes["fp16"] == 2000
    assert sizes["fp16"] == sizes["bf16"]


def test_fp16_rounds_to_nearest_even_and_refuses_overflow():
    layout = Layout.flat(3)
    x = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 65504.0])  # halfway cases round to even
    msg, _ = fp16().encode(x, layout, None)
    assert msg.expand(layout).tolist() == [1.0, 1 + 4 * 2**-11, 65504.0]
    msg, _ = fp16().encode(torch.tensor([1.0, 2.0, 70000.0]), layout, None)
    with pytest.raises(wire.WireError) as e:
        wire.encode(msg, layout)
    assert e.value.reason is wire.Reason.NON_FINITE
