"""What overlapping clients can gain on this machine: client updates per second of one
client at a time with 1 and with 2 torch threads, and of the threads and processes
executors (one torch thread per client), on the overhead workload (FedAvg, MNIST, LeNet-5,
10 clients a round), rounds 2-6 (no evaluation in them). Two single-threaded clients at
once can give at most twice the 1-thread rate.

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/bound_executors.py
"""

from __future__ import annotations

import time

import torch

from bench_sim import config
from fedpress.config import from_dict
from fedpress.runtime.executor import make_executor
from fedpress.sim import run_round, setup
from fedpress.sim.rounds import fresh


def main() -> None:
    raw = config(100).to_dict()  # evaluated only at round 100: rounds 1-6 train and aggregate only
    rates = {}
    for name, threads in (("sequential", 1), ("sequential", 2), ("threads", 2), ("processes", 2)):
        torch.set_num_threads(threads)
        exp = setup(from_dict({**raw, "executor": name}))
        p = fresh(exp)
        with make_executor(exp) as executor:
            run_round(exp, p, executor, 0)
            started = time.perf_counter()
            for t in range(1, 6):
                run_round(exp, p, executor, t)
            rates[(name, threads)] = 50 / (time.perf_counter() - started)
    one, two = rates[("sequential", 1)], rates[("sequential", 2)]
    for (name, threads), rate in rates.items():
        print(f"{name:>10} ({threads} torch threads in this process): {rate:6.1f} updates/s, "
              f"{rate / two:.2f}x the 2-thread sequential")
    print(f"two one-thread clients at once: at most {2 * one:.1f} updates/s, {2 * one / two:.2f}x")


if __name__ == "__main__":
    main()
