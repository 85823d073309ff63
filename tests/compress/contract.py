"""The contract every codec keeps. A codec's test class inherits `CodecContract` and lists
its instances in `codecs`; each test here then runs for each of them.

What is checked is what the codec declares in `codec.promises`, plus what every codec
owes: bytes that decode to exactly the message, no mutation of inputs, explicit state,
same seed same bytes, and clear errors for bad input.

A check of a promise is marked `@declared(promise)`: it is generated only for the codecs
whose promises make it (conftest.py's `pytest_generate_tests` leaves the others out), and
a class none of whose codecs makes it does not get the test at all. Nothing is skipped:
every test collected is a check that applies.
"""

import copy
import dataclasses

import pytest
import torch

from fedpress import Layout, wire
from fedpress.rng import derive

LAYOUT = Layout.from_shapes({"conv": (6, 3, 3, 3), "conv_b": (6,), "fc": (10, 24), "fc_b": (10,)})
D = LAYOUT.numel


def inputs():
    """Vectors that stress codecs: gaussian, heavy-tailed, ties, one-hot, all zero."""
    g = torch.Generator().manual_seed(1234)
    gauss = torch.randn(D, generator=g)
    heavy = torch.randn(D, generator=g) ** 3
    ties = torch.randint(-3, 4, (D,), generator=g).float()
    one_hot = torch.zeros(D)
    one_hot[17] = -5.0
    return {"gauss": gauss, "heavy": heavy, "ties": ties, "one_hot": one_hot, "zero": torch.zeros(D)}


def normal_range_input():
    """Magnitudes in [1e-3, 1e3]: inside fp16's and bf16's normal range."""
    g = torch.Generator().manual_seed(99)
    mag = 10 ** (torch.rand(D, generator=g) * 6 - 3)
    sign = torch.where(torch.rand(D, generator=g) < 0.5, -1.0, 1.0)
    return mag * sign


def run(codec, x, seed=0, state=None, layout=LAYOUT):
    state = codec.init(layout) if state is None else state
    return codec.encode(x, layout, state, derive(seed, "codec-test"))


def tensors_of(state):
    """All tensors inside a (nested) dataclass state, for mutation checks."""
    if isinstance(state, torch.Tensor):
        return [state]
    if dataclasses.is_dataclass(state):
        return [t for f in dataclasses.fields(state) for t in tensors_of(getattr(state, f.name))]
    if isinstance(state, tuple | list):
        return [t for s in state for t in tensors_of(s)]
    return []


def declared(promise):
    """Marks a contract test as the check of a promise: `promise(codec.promises)` says
    whether a codec makes it. The test runs for exactly the codecs that do."""

    def mark(test):
        test.declared = promise
        return test

    return mark


def declares(test, codec) -> bool:
    """Whether `codec` makes the promise `test` checks (every codec owes an unmarked test)."""
    promise = getattr(test, "declared", None)
    return promise is None or bool(promise(codec.promises))


class CodecContract:
    codecs: list = []

    def __init_subclass__(cls, **kwargs):
        """A promise no codec of the class declares: the class does not get its test."""
        super().__init_subclass__(**kwargs)
        for name in {n for k in cls.__mro__ for n in vars(k) if n.startswith("test_")}:
            test = next((vars(k)[name] for k in cls.__mro__ if callable(vars(k).get(name))), None)
            if test is None:
                continue
            if not any(declares(test, c) for c in cls.codecs):
                setattr(cls, name, None)  # not callable: pytest collects nothing under this name
            elif getattr(cls, name) is None:  # a parent's codecs did not declare it; these do
                setattr(cls, name, test)

    def test_message_round_trips_through_bytes(self, codec):
        for name, x in inputs().items():
            msg, _ = run(codec, x)
            data = wire.encode(msg, LAYOUT)
            back = wire.decode(data, LAYOUT)
            assert back.same_as(msg), name
            assert torch.equal(codec.decode(back, LAYOUT), codec.decode(msg, LAYOUT)), name

    def test_decode_is_a_finite_fp32_vector_of_length_d(self, codec):
        for x in inputs().values():
            x_hat = codec.decode(run(codec, x)[0], LAYOUT)
            assert x_hat.dtype == torch.float32 and x_hat.shape == (D,)
            assert bool(torch.isfinite(x_hat).all())

    def test_never_mutates_input_or_state(self, codec):
        x = inputs()["gauss"]
        x_before = x.clone()
        state = codec.init(LAYOUT)
        _, state = run(codec, x, state=state)  # a non-initial state for stateful codecs
        state_before = copy.deepcopy(state)
        run(codec, x, seed=1, state=state)
        assert torch.equal(x, x_before)
        for t, t0 in zip(tensors_of(state), tensors_of(state_before), strict=True):
            assert torch.equal(t, t0)

    def test_same_seed_same_bytes(self, codec):
        for x in inputs().values():
            state_a = state_b = codec.init(LAYOUT)
            for step in range(3):  # threads the returned state through several encodes
                msg_a, state_a = run(codec, x, seed=step, state=state_a)
                msg_b, state_b = run(codec, x, seed=step, state=state_b)
                assert wire.encode(msg_a, LAYOUT) == wire.encode(msg_b, LAYOUT)

    def test_randomness_only_from_the_given_generator(self, codec):
        x = inputs()["gauss"]
        if codec.promises.stochastic:
            with pytest.raises(ValueError, match="Generator"):
                codec.encode(x, LAYOUT, codec.init(LAYOUT), None)
            a = wire.encode(run(codec, x, seed=0)[0], LAYOUT)
            b = wire.encode(run(codec, x, seed=1)[0], LAYOUT)
            assert a != b
        else:
            msg, _ = codec.encode(x, LAYOUT, codec.init(LAYOUT), None)
            assert wire.encode(msg, LAYOUT) == wire.encode(run(codec, x)[0], LAYOUT)

    def test_rejects_bad_input_with_a_clear_error(self, codec):
        with pytest.raises(ValueError, match=str(D)):
            codec.encode(torch.zeros(D + 1), LAYOUT, codec.init(LAYOUT), derive(0, "t"))
        with pytest.raises(ValueError, match="float32"):
            codec.encode(torch.zeros(D, dtype=torch.float64), LAYOUT, codec.init(LAYOUT), derive(0, "t"))

    @declared(lambda p: p.lossless)
    def test_lossless(self, codec):
        for x in inputs().values():
            assert torch.equal(codec.decode(run(codec, x)[0], LAYOUT), x)

    @declared(lambda p: p.contraction is not None)
    def test_contraction(self, codec):
        bound = codec.promises.contraction
        delta = bound(LAYOUT)
        assert 0 < delta <= 1
        for seed in range(5):
            for x in [*inputs().values(), normal_range_input()]:
                err = (codec.decode(run(codec, x, seed)[0], LAYOUT) - x).square().sum()
                assert err <= (1 - delta) * x.square().sum() * (1 + 1e-6) + 1e-12

    @declared(lambda p: p.relative_error is not None)
    def test_relative_error(self, codec):
        r = codec.promises.relative_error
        x = normal_range_input()
        x_hat = codec.decode(run(codec, x)[0], LAYOUT)
        assert bool(((x_hat - x).abs() <= r * x.abs()).all())

    @declared(lambda p: p.unbiased)
    def test_unbiased(self, codec):
        x = inputs()["gauss"]
        n = 3000
        draws = torch.stack([codec.decode(run(codec, x, seed)[0], LAYOUT) for seed in range(n)])
        mean_err = (draws.mean(0) - x).square().sum()
        # E||mean - x||^2 = E||C(x) - x||^2 / n: the sample mean converges to x at that rate.
        per_draw = (draws - x).square().sum(1).mean()
        assert mean_err <= 3 * per_draw / n

    @declared(lambda p: p.variance is not None or p.expected_contraction is not None)
    def test_variance_bound(self, codec):
        for name in ("variance", "expected_contraction"):
            bound = getattr(codec.promises, name)
            if bound is None:
                continue
            omega = bound(LAYOUT) if name == "variance" else 1 - bound(LAYOUT)
            for x in (inputs()["gauss"], inputs()["heavy"]):
                errs = torch.stack(
                    [(codec.decode(run(codec, x, seed)[0], LAYOUT) - x).square().sum() for seed in range(1000)]
                )
                # Monte Carlo mean within 4 standard errors of the declared bound
                assert errs.mean() <= omega * x.square().sum() + 4 * errs.std() / 1000**0.5
            return
