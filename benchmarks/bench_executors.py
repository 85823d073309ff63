"""Executors on the overhead workload, each against the plain PyTorch loop in the same run.

FedAvg, MNIST, 100 IID clients, 10 per round (then 100 per round), 1 local epoch, batch 32,
SGD lr 0.05, LeNet-5. Every executor and the hand-written loop (bench_sim.py's, with the
process's torch threads) run alternately, best of --repeats; the executor's start (a
process pool's spawn and warm-up) is timed apart and included in its total. Prints client
updates per second, the ratio to the plain loop, the final test accuracy, and the peak
resident memory while the executor ran (this process plus its worker processes, sampled
every 20 ms).

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/bench_executors.py \
        [--rounds 20] [--repeats 2] [--per-round 10 100] [--executors sequential threads processes vmap auto]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import torch

from bench_sim import config, plain_rounds
from fedpress.config import from_dict
from fedpress.runtime.executor import EXECUTORS, make_executor
from fedpress.sim import run_round, setup
from fedpress.sim.rounds import fresh


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def family_rss() -> int:
    """Resident memory of this process and its children (a process pool's workers)."""
    me = os.getpid()
    children = Path(f"/proc/{me}/task/{me}/children")
    pids = [me, *map(int, children.read_text().split())] if children.exists() else [me]
    return sum(rss_bytes(pid) for pid in pids)


class PeakMemory:
    def __enter__(self):
        self.peak, self.stop = family_rss(), threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, family_rss())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def executor_rounds(exp) -> tuple[float, float, float, float, int]:
    """(seconds in all, of which starting the executor, seconds of rounds 2.., final
    accuracy, peak RSS bytes)."""
    p = fresh(exp)
    with PeakMemory() as memory:
        started = time.perf_counter()
        with make_executor(exp) as executor:
            ready = time.perf_counter()
            for t in range(exp.config.rounds):
                run_round(exp, p, executor, t)
        total = time.perf_counter() - started
    steady = sum(r["wall_seconds"] for r in p.rows[1:])
    return total, ready - started, steady, p.rows[-1]["test_accuracy"], memory.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--per-round", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--executors", nargs="+", default=[n for n in ("sequential", "threads", "processes", "vmap",
                                                                     "auto") if n in EXECUTORS])
    args = ap.parse_args()
    print(f"FedAvg, MNIST, LeNet-5, 100 IID clients, 1 epoch, batch 32, {args.rounds} rounds, "
          f"{torch.get_num_threads()} torch threads in this process; best of {args.repeats}, alternating")
    for per_round in args.per_round:
        raw = config(args.rounds).to_dict()
        raw["clients_per_round"] = per_round
        base = setup(from_dict(raw))
        updates = args.rounds * per_round
        plain, ours = [], {name: [] for name in args.executors}
        for _ in range(args.repeats):
            plain.append(plain_rounds(base)[0])
            for name in args.executors:
                exp = setup(from_dict({**raw, "executor": name}))
                ours[name].append(executor_rounds(exp))
        t_plain = min(plain)
        per_round_plain = t_plain / args.rounds
        print(f"\n{per_round} clients per round ({updates} client updates); plain loop {t_plain:.2f} s, "
              f"{updates / t_plain:.2f} updates/s")
        print(f"{'executor':>11} {'seconds':>8} {'start s':>8} {'updates/s':>10} {'vs plain':>9} "
              f"{'rounds 2.. vs plain':>20} {'test acc':>9} {'peak RSS':>9}")
        for name, runs in ours.items():
            total, start, steady, acc, peak = min(runs)
            steady_ratio = per_round_plain * (args.rounds - 1) / steady
            print(f"{name:>11} {total:>8.2f} {start:>8.2f} {updates / total:>10.2f} {t_plain / total:>8.3f}x "
                  f"{steady_ratio:>19.3f}x {acc:>9.4f} {peak / 2**20:>7.0f}MB")


if __name__ == "__main__":
    main()
