"""Fuzz: random and mutated bytes give a WireError or a message that is valid and re-encodes."""

import zlib

import torch
from benchmarks.bench_fuzz import fuzz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpress.wire import Message, Reason, WireError, decode, encode
from tests.wire.test_frame import random_messages

CASES = list(random_messages())


def check(data: bytes, layout) -> None:
    try:
        msg = decode(data, layout)
    except WireError:
        return
    assert isinstance(msg, Message)
    x = msg.expand(layout)
    assert x.shape == (layout.numel,) and bool(torch.isfinite(x).all())
    assert encode(msg, layout) == data  # canonical: bytes identify the message


def fix_crc(data: bytes) -> bytes:
    return data[:-4] + zlib.crc32(data[:-4]).to_bytes(4, "little")


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes(data):
    check(data, CASES[0][0])
    check(b"FPRS\x01" + data, CASES[0][0])


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(CASES) - 1), st.data())
def test_mutated_messages(case, data):
    layout, msg = CASES[case]
    good = encode(msg, layout)
    mutated = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if op == "flip" and mutated:
            mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and mutated:
            mutated[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del mutated[at : at + data.draw(st.integers(1, 8))]
        else:
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    mutated = bytes(mutated)
    check(mutated, layout)
    # With the checksum repaired the structural checks themselves are exercised.
    if len(mutated) >= 4:
        check(fix_crc(mutated), layout)


def test_every_single_bit_flip_of_every_case_with_a_repaired_checksum():
    """Exhaustive: one flipped bit anywhere (CRC repaired) is refused or decodes to a valid message.
    This found an affine scale that passed every check yet decoded to inf."""
    for layout, msg in CASES:
        good = encode(msg, layout)
        for at in range(len(good) - 4):
            for bit in range(8):
                mutated = bytearray(good)
                mutated[at] ^= 1 << bit
                check(fix_crc(bytes(mutated)), layout)


def test_fuzz_benchmark_short_run():
    """benchmarks/bench_fuzz.py, briefly: every codec's frames, mutated with the CRC repaired.
    Every accepted frame expands to finite values and re-encodes to itself; only WireErrors escape."""
    result = fuzz(10_000, seed=1)
    assert result.violation_count == 0, result.violations
    assert result.inputs == 10_000 and result.outcomes["accepted"] > 1000
    assert sum(result.outcomes[r.name] > 0 for r in Reason) >= 14  # the mutations reach the inner checks
