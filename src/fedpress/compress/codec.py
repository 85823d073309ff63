"""The codec contract: pure functions, explicit state, declared promises.

A codec is a factory's product that closes over its hyperparameters and offers

    init(layout)                     -> state
    encode(x, layout, state, rng)    -> (Message, state)      # never writes into x or state
    decode(message, layout)          -> x_hat (fp32, length d)

`decode` is the same for every codec (`Message.expand`): a message says everything the
receiver needs, so a server decodes any client's update without knowing its codec.
`promises` says what the codec guarantees; one shared contract suite
(tests/compress/contract.py) checks every codec against what it declares.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from fedpress.layout import Layout
from fedpress.wire.message import Message

State = Any  # a codec's state: None, or a frozen dataclass of tensors
Bound = Callable[[Layout], float]  # a bound that depends on the vector's layout (d, tensor sizes)


@dataclass(frozen=True)
class Promises:
    """What a codec C guarantees for every input x (E is over the codec's randomness).

    lossless              C(x) == x bit for bit.
    unbiased              E[C(x)] = x.
    variance(L)           E||C(x) - x||^2 <= variance * ||x||^2            (unbiased codecs)
    contraction(L)        ||C(x) - x||^2 <= (1 - contraction) ||x||^2      (every draw)
    expected_contraction  E||C(x) - x||^2 <= (1 - expected_contraction) ||x||^2
    relative_error        |C(x)_j - x_j| <= relative_error * |x_j| for x_j in the normal
                          range of the wire's float format (fp16: 6.1e-5 .. 65504)
    stochastic            encode draws from `rng` (which must then be given)
    """

    lossless: bool = False
    unbiased: bool = False
    variance: Bound | None = None
    contraction: Bound | None = None
    expected_contraction: Bound | None = None
    relative_error: float | None = None
    stochastic: bool = False


def decode(message: Message, layout: Layout) -> torch.Tensor:
    """The receiver's side of every codec."""
    return message.expand(layout)


@dataclass(frozen=True)
class Codec:
    name: str
    init: Callable[[Layout], State]
    encode: Callable[[torch.Tensor, Layout, State, torch.Generator | None], tuple[Message, State]]
    promises: Promises = field(default_factory=Promises)
    # how to make it again: (module, factory name, args, kwargs), set by @factory. A codec's
    # functions are closures, so it crosses a process boundary as this call, never as code.
    recipe: tuple | None = field(default=None, compare=False, repr=False)

    def decode(self, message: Message, layout: Layout) -> torch.Tensor:
        return decode(message, layout)

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self):
        if self.recipe is None:
            raise TypeError(f"codec {self.name!r} was not made by a fedpress.compress factory (@factory), "
                            f"so it cannot be pickled; decorate its factory with fedpress.compress.codec.factory")
        return _remake, self.recipe


def _remake(module: str, name: str, args: tuple, kwargs: tuple) -> Codec:
    return getattr(importlib.import_module(module), name)(*args, **dict(kwargs))


def factory(make: Callable[..., Codec]) -> Callable[..., Codec]:
    """Marks a codec factory: the codecs it makes remember the call (their `recipe`), so a
    codec pickles as `factory(*args, **kwargs)` and a plan that holds one can cross to a
    worker process."""

    @functools.wraps(make)
    def made(*args, **kwargs) -> Codec:
        return replace(make(*args, **kwargs), recipe=(make.__module__, make.__name__, args, tuple(kwargs.items())))

    return made


def stateless(_: Layout) -> None:
    return None


def check_input(x: torch.Tensor, layout: Layout, name: str) -> None:
    """Codecs take a flat fp32 vector laid out by `layout`; say clearly when they do not."""
    if x.ndim != 1 or x.numel() != layout.numel:
        raise ValueError(f"{name}: expected a flat vector of {layout.numel} elements, got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise ValueError(f"{name}: expected float32 input, got {x.dtype}")


def need_rng(rng: torch.Generator | None, name: str) -> torch.Generator:
    if rng is None:
        raise ValueError(f"{name} is stochastic: pass a torch.Generator derived from the run seed")
    return rng


def count_for(d: int, ratio: float | None, k: int | None) -> int:
    """How many coordinates to keep out of d: k = max(1, ceil(ratio * d)) [spec §1.2 CHOICE]."""
    if d == 0:
        return 0
    if k is not None:
        return min(int(k), d)
    # round() first: 0.07 * 100 is 7.000000000000001 in floating point, whose ceil is 8
    return min(d, max(1, math.ceil(round(ratio * d, 9))))


def check_ratio(name: str, ratio: float | None, k: int | None) -> None:
    if (ratio is None) == (k is None):
        raise ValueError(f"{name}: give exactly one of ratio= (fraction kept, in (0, 1]) or k= (count)")
    if ratio is not None and not 0 < ratio <= 1:
        raise ValueError(f"{name}: ratio must be in (0, 1], got {ratio}")
    if k is not None and int(k) < 1:
        raise ValueError(f"{name}: k must be >= 1, got {k}")
