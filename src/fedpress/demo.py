"""A table of what each codec sends for one model-sized update: real bytes and error.

    python -m fedpress.demo [--d 1000000]
"""

from __future__ import annotations

import argparse

import torch

from fedpress import Layout, wire
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
    threshold,
    top_k,
)
from fedpress.rng import derive

CODECS = [
    fp32(),
    fp16(),
    bf16(),
    chain(top_k(0.01), fp16()),
    chain(top_k(0.01, scope="tensor"), fp16()),
    chain(random_k(0.01, seeded=True), fp16()),
    chain(threshold(0.02), fp16()),
    chain(ema_threshold(), fp16()),
    qsgd(7, 512),
    qsgd(1, 512, elias=True),
    minmax_affine(8),
    minmax_affine(4),
    chain(top_k(0.1), qsgd(7, 512)),
    error_feedback(chain(top_k(0.01), fp16())),
]


def codec_table(d: int = 1_000_000, seed: int = 0) -> str:
    layout = Layout.from_shapes({"conv.weight": (d // 2 // 9, 1, 3, 3), "fc.weight": (d - d // 2 // 9 * 9 - 100, 1),
                                 "fc.bias": (100,)})
    x = torch.randn(layout.numel, generator=derive(seed, "demo")) * 0.01  # (d,)
    dense = len(wire.encode(fp32().encode(x, layout, None)[0], layout))
    rows = [f"{'codec':<52} {'bytes':>10} {'vs fp32':>8} {'rel. error':>10}"]
    for codec in CODECS:
        msg, _ = codec.encode(x, layout, codec.init(layout), derive(seed, "demo", codec.name))
        data = wire.encode(msg, layout)  # the real bytes: what a ledger would count
        x_hat = wire.decode(data, layout).expand(layout)
        err = float((x_hat - x).norm() / x.norm())
        rows.append(f"{codec.name:<52} {len(data):>10,} {dense / len(data):>7.1f}x {err:>10.4f}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"One update of d = {args.d:,} gaussian values, each codec's real message:\n")
    print(codec_table(args.d))


if __name__ == "__main__":
    main()
