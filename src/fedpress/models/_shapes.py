"""Small shape helpers so each model can size its first Linear layer from the input shape."""

from __future__ import annotations

import math
from collections.abc import Sequence


def conv_out(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    """Spatial size after a convolution (or a pooling with kernel == stride), floor division."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int) -> int:
    """Spatial size after a 2x2, stride-2 max-pool."""
    return size // 2


def image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """Check and return (channels, height, width) for a convolutional model."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{model}: input_shape must be (channels, height, width), got {shape}")
    return shape  # type: ignore[return-value]


def flat_size(input_shape: Sequence[int], model: str) -> int:
    """Number of input features once the sample is flattened (any shape)."""
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"{model}: input_shape must be non-empty and positive, got {shape}")
    return math.prod(shape)


def check_positive(value: int, what: str, model: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{model}: {what} must be a positive int, got {value!r}")
    return value


def check_spatial(size: tuple[int, int], model: str, input_hw: tuple[int, int]) -> None:
    """Raise if the convolutional trunk shrinks the image to nothing."""
    if min(size) < 1:
        raise ValueError(
            f"{model}: input of {input_hw[0]}x{input_hw[1]} is too small; "
            f"the feature map would be {size[0]}x{size[1]}"
        )
