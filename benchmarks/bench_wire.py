"""Wire and codec figures: index cost against log2 C(d, k), and encode/decode speed
against torch.topk on a ResNet-18-sized vector, both measured in this run.

    .venv/bin/python benchmarks/bench_wire.py [--d 11000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from fedpress import Layout, wire
from fedpress.compress import chain, ema_threshold, fp16, qsgd, top_k
from fedpress.rng import derive


def log2_binomial(d: int, k: int) -> float:
    return (math.lgamma(d + 1) - math.lgamma(k + 1) - math.lgamma(d - k + 1)) / math.log(2)


def index_cost(d: int = 1_000_000) -> None:
    print(f"\nIndex cost, d = {d:,} (uniformly random index sets)")
    print(f"{'density':>8} {'k':>8} {'method':>7} {'bits':>10} {'log2 C(d,k)':>12} {'ratio':>6} "
          f"{'raw32 bits':>11} {'bitmap bits':>11}")
    rng = np.random.default_rng(0)
    for density in (1e-1, 1e-2, 1e-3, 1e-5):
        k = round(d * density)
        idx = np.sort(rng.choice(d, k, replace=False)).astype(np.int64)
        section = wire.encode_indices(idx, d)  # tag byte included
        bits, minimum = 8 * len(section), log2_binomial(d, k)
        print(f"{density:>8.0e} {k:>8,} {wire.index_method(section):>7} {bits:>10,} {minimum:>12,.0f} "
              f"{bits / minimum:>6.3f} {32 * k:>11,} {8 * ((d + 7) // 8):>11,}")


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def speed(d: int, repeats: int) -> None:
    # A ResNet-18-like layout: 62 tensors, most of the mass in a few large conv kernels.
    shapes = [("stem", (64, 3, 3, 3))]
    for i, (c_in, c_out) in enumerate([(64, 64), (64, 128), (128, 256), (256, 512)]):
        shapes += [(f"l{i}.a", (c_out, c_in, 3, 3)), (f"l{i}.a_bn", (c_out,)), (f"l{i}.b", (c_out, c_out, 3, 3)),
                   (f"l{i}.b_bn", (c_out,)), (f"l{i}.c", (c_out, c_out, 3, 3)), (f"l{i}.d", (c_out, c_out, 3, 3))]
    used = sum(math.prod(s) for _, s in shapes)
    shapes.append(("rest", (max(d - used, 1),)))
    layout = Layout.from_shapes(shapes)
    d = layout.numel
    x = torch.randn(d, generator=torch.Generator().manual_seed(0)) * 0.01
    k = math.ceil(0.01 * d)
    ref = timed(lambda: torch.topk(x.abs(), k, sorted=False), repeats)
    print(f"\nSpeed, d = {d:,} fp32 ({len(layout)} tensors), {torch.get_num_threads()} threads, median of {repeats}")
    print(f"reference torch.topk(|x|, k = 1%): {ref * 1e3:.1f} ms")
    print(f"{'codec':>36} {'bytes':>11} {'encode ms':>10} {'x topk':>7} {'decode ms':>10} {'x topk':>7}")
    cases = [chain(top_k(0.01), fp16()), chain(ema_threshold(), fp16()), qsgd(15, 512), qsgd(7, 512)]
    for codec in cases:
        state = codec.init(layout)
        if "ema" in codec.name:  # a realistic, warmed-up threshold state
            _, state = codec.encode(x, layout, state, None)
        gen = derive(0, "bench")

        def enc(codec=codec, state=state, gen=gen):
            return wire.encode(codec.encode(x, layout, state, gen)[0], layout)

        data = enc()
        t_enc = timed(enc, repeats)
        t_dec = timed(lambda data=data: wire.decode(data, layout).expand(layout), repeats)
        print(f"{codec.name:>36} {len(data):>11,} {t_enc * 1e3:>10.1f} {t_enc / ref:>7.2f} "
              f"{t_dec * 1e3:>10.1f} {t_dec / ref:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d", type=int, default=11_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    index_cost()
    speed(args.d, args.repeats)


if __name__ == "__main__":
    main()
