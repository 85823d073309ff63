"""fedpress on Flower's simulation engine against the fedpress simulator, same config, same run.

1. The simulator-overhead workload (bench_sim.py: FedAvg, MNIST, 100 IID clients, 10 a
   round, LeNet-5, 1 local epoch, 20 rounds) through `run` and through `run_flower`:
   client updates per second for each, and their ratio. Flower's time includes starting
   Ray and the 100 virtual SuperNodes; the steady-state rate leaves out the first round.
2. One round of topk_ef 1% (fp16 values): the ledger's bytes, Flower's own count_bytes()
   of the same messages, and the bytes of the dense fp32 model, side by side.
3. (--part async) FedBuff and QAFeL (4-bit min-max both ways) on MNIST with SimpleConvNet,
   100 IID clients, concurrency 10, K = 10: the virtual-clock engine against Flower's
   engine in real time (uploads per second, accuracy, staleness, bytes; QAFeL's downlink
   eager per receiver in the simulator, lazy catch-up on Flower).

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/bench_flower.py [--rounds 20] [--part all]
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
from fedpress.sim import asynchronous, run


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def overhead(rounds: int, tmp: Path) -> None:
    cfg = config(rounds)
    updates = rounds * cfg.clients_per_round
    sim_s = timed(lambda: run(cfg, tmp / "sim", progress=False))
    fl_s = timed(lambda: run_flower(cfg, tmp / "flower", progress=False))
    sim_rows, fl_rows = rows(tmp / "sim"), rows(tmp / "flower")
    steady = sum(float(r["wall_seconds"]) for r in fl_rows[1:])
    sim_steady = sum(float(r["wall_seconds"]) for r in sim_rows[1:])
    same = [a["test_accuracy"] == b["test_accuracy"] and a["uplink_bytes"] == b["uplink_bytes"]
            for a, b in zip(sim_rows, fl_rows, strict=True)]
    print(f"FedAvg, MNIST, LeNet-5, 100 IID clients, 10 a round, {rounds} rounds, one torch thread")
    print(f"  fedpress simulator : {sim_s:7.1f} s  {updates / sim_s:6.2f} updates/s "
          f"(rounds 2..: {(updates - 10) / sim_steady:6.2f}/s)")
    print(f"  Flower (Ray)       : {fl_s:7.1f} s  {updates / fl_s:6.2f} updates/s "
          f"(rounds 2..: {(updates - 10) / steady:6.2f}/s)")
    print(f"  ratio Flower / simulator: {sim_s / fl_s:.2f}x overall, {sim_steady / steady:.2f}x rounds 2..")
    print(f"  same accuracy and bytes every round: {all(same)}")


def topk_bytes(tmp: Path) -> None:
    raw = config(1).to_dict()
    raw["algorithm"] = {"name": "topk_ef", "ratio": 0.01, "precision": "fp16"}
    run_flower(from_dict(raw), tmp / "topk", progress=False)
    r = rows(tmp / "topk")[0]
    clients = int(r["clients"])
    print(f"One round of topk_ef 1% + fp16, {clients} clients, uplink:")
    print(f"  ledger (fedpress frames)  : {int(r['uplink_bytes']):>10,} B")
    print(f"  Flower count_bytes()      : {int(r['flower_uplink_bytes']):>10,} B")
    print(f"  dense fp32 model frames   : {int(r['dense_uplink_bytes']):>10,} B")


def async_config(name: str, steps: int):
    algorithm = {"name": name, "buffer_size": 10, "server_lr": 1.0, "server_step": "sum"}
    if name == "qafel":
        algorithm.update(client_quantizer="minmax_affine", client_bits=4, server_quantizer="minmax_affine",
                         server_bits=4)
    return from_dict({
        "name": f"bench_flower_{name}", "seed": 0, "rounds": steps, "eval_every": steps, "checkpoint_every": 0,
        "data": {"dataset": "mnist", "num_clients": 100, "partition": "iid"},
        "model": {"name": "simple_convnet"},
        "train": {"epochs": 1, "batch_size": 10, "lr": 0.003, "momentum": 0.0},
        "algorithm": algorithm,
        "async": {"arrivals": "concurrency", "concurrency": 10, "duration": "half_normal"},
    })


def asynchronous_engines(steps: int, tmp: Path) -> None:
    print(f"Asynchronous, MNIST, SimpleConvNet, 100 IID clients, concurrency 10, K = 10, {steps} server steps")
    print(f"  {'run':<22} {'wall s':>7} {'uploads/s':>9} {'accuracy':>8} {'staleness':>9} {'MB up':>7} {'MB down':>8}")
    for name in ("fedbuff", "qafel"):
        cfg = async_config(name, steps)
        for engine, fn in (("virtual clock", asynchronous.run), ("Flower (Ray), real", run_flower)):
            out = tmp / f"{name}_{engine.split()[0]}"
            started = time.perf_counter()
            s = fn(cfg, out, progress=False)
            wall = time.perf_counter() - started
            print(f"  {name + ', ' + engine:<22} {wall:7.1f} {s['uploads'] / wall:9.2f} "
                  f"{100 * s['final_accuracy']:7.2f}% {s['mean_staleness']:9.2f} {s['uplink_bytes'] / 1e6:7.2f} "
                  f"{s['downlink_bytes'] / 1e6:8.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=30, help="server steps of the asynchronous part")
    ap.add_argument("--part", choices=("all", "overhead", "bytes", "async"), default="all")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as each Flower ClientApp: one thread, the same sums
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.part in ("all", "overhead"):
            overhead(args.rounds, tmp)
        if args.part in ("all", "bytes"):
            topk_bytes(tmp)
        if args.part in ("all", "async"):
            asynchronous_engines(args.steps, tmp)
