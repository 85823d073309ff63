"""fedpress on Flower's simulation engine against the fedpress simulator, same config, same run.

1. The simulator-overhead workload (bench_sim.py: FedAvg, MNIST, 100 IID clients, 10 a
   round, LeNet-5, 1 local epoch, 20 rounds) through `run` and through `run_flower`:
   client updates per second for each, and their ratio. Flower's time includes starting
   Ray and the 100 virtual SuperNodes; the steady-state rate leaves out the first round.
2. One round of topk_ef 1% (fp16 values): the ledger's bytes, Flower's own count_bytes()
   of the same messages, and the bytes of the dense fp32 model, side by side.

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/bench_flower.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from bench_sim import config
from fedpress.config import from_dict
from fedpress.flower import run_flower
from fedpress.sim import run


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as each Flower ClientApp: one thread, the same sums
    cfg = config(args.rounds)
    updates = args.rounds * cfg.clients_per_round
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim_s = timed(lambda: run(cfg, tmp / "sim", progress=False))
        fl_s = timed(lambda: run_flower(cfg, tmp / "flower", progress=False))
        sim_rows, fl_rows = rows(tmp / "sim"), rows(tmp / "flower")
        steady = sum(float(r["wall_seconds"]) for r in fl_rows[1:])
        sim_steady = sum(float(r["wall_seconds"]) for r in sim_rows[1:])
        same = [a["test_accuracy"] == b["test_accuracy"] and a["uplink_bytes"] == b["uplink_bytes"]
                for a, b in zip(sim_rows, fl_rows, strict=True)]
        print(f"FedAvg, MNIST, LeNet-5, 100 IID clients, 10 a round, {args.rounds} rounds, one torch thread")
        print(f"  fedpress simulator : {sim_s:7.1f} s  {updates / sim_s:6.2f} updates/s "
              f"(rounds 2..: {(updates - 10) / sim_steady:6.2f}/s)")
        print(f"  Flower (Ray)       : {fl_s:7.1f} s  {updates / fl_s:6.2f} updates/s "
              f"(rounds 2..: {(updates - 10) / steady:6.2f}/s)")
        print(f"  ratio Flower / simulator: {sim_s / fl_s:.2f}x overall, {sim_steady / steady:.2f}x rounds 2..")
        print(f"  same accuracy and bytes every round: {all(same)}")

        raw = config(1).to_dict()
        raw["algorithm"] = {"name": "topk_ef", "ratio": 0.01, "precision": "fp16"}
        run_flower(from_dict(raw), tmp / "topk", progress=False)
        r = rows(tmp / "topk")[0]
        clients = int(r["clients"])
        print(f"One round of topk_ef 1% + fp16, {clients} clients, uplink:")
        print(f"  ledger (fedpress frames)  : {int(r['uplink_bytes']):>10,} B")
        print(f"  Flower count_bytes()      : {int(r['flower_uplink_bytes']):>10,} B")
        print(f"  dense fp32 model frames   : {int(r['dense_uplink_bytes']):>10,} B")
