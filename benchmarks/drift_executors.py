"""How far one torch thread per client (threads) and vmap drift from a 2-thread sequential
run on the overhead workload: after one round and after 20 (max |x - x_seq| / (1 + |x_seq|))
and in final test accuracy.

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/drift_executors.py
"""

from __future__ import annotations

import torch

from bench_sim import config
from fedpress.config import from_dict
from fedpress.runtime.executor import make_executor
from fedpress.sim import run_round, setup
from fedpress.sim.rounds import fresh


def main() -> None:
    raw = config(20).to_dict()
    out = {}
    torch.set_num_threads(2)
    for name, executor in (("sequential-2", "sequential"), ("threads", "threads"), ("vmap", "vmap")):
        exp = setup(from_dict({**raw, "executor": executor}))
        p, xs = fresh(exp), []
        with make_executor(exp) as ex:
            for t in range(20):
                run_round(exp, p, ex, t)
                xs.append(exp.algorithm.model(p.server).clone())
        out[name] = (xs, p.rows[-1]["test_accuracy"])
    ref, acc = out["sequential-2"]
    for name, (xs, a) in out.items():
        d1 = float(((xs[0] - ref[0]).abs() / (1 + ref[0].abs())).max())
        d20 = float(((xs[-1] - ref[-1]).abs() / (1 + ref[-1].abs())).max())
        print(f"{name:>13}: after round 1 max |x - x_seq|/(1+|x_seq|) = {d1:.2e}; after 20 rounds {d20:.2e}; "
              f"final test accuracy {a:.4f} (sequential, 2 threads: {acc:.4f})")


if __name__ == "__main__":
    main()
