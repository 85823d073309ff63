"""Simulator overhead: fedpress FedAvg against a plain PyTorch FedAvg loop, same process.

MNIST, 100 IID clients, 10 per round, 1 local epoch, batch 32, SGD lr 0.05, LeNet-5,
20 rounds. Both keep the data in memory as tensors; the plain loop is what one would
write by hand (load_state_dict, torch.optim.SGD, average the state dicts). Prints client
updates per second for each and their ratio (target: fedpress >= 0.95x).

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/bench_sim.py [--rounds 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fedpress.config import from_dict
from fedpress.local import batches
from fedpress.metrics.ledger import Ledger
from fedpress.models import build_model
from fedpress.rng import derive
from fedpress.runtime.executor import Sequential
from fedpress.runtime.transport import dense_frame_bytes
from fedpress.sim import Progress, run_round, sample_clients, setup


def config(rounds: int):
    return from_dict({
        "name": "bench_sim", "seed": 0, "rounds": rounds, "clients_per_round": 10, "eval_every": rounds,
        "checkpoint_every": 0,
        "data": {"dataset": "mnist", "num_clients": 100, "partition": "iid"},
        "model": {"name": "lenet5"},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        "algorithm": {"name": "fedavg"},
    })


def fedpress_rounds(exp) -> float:
    cfg = exp.config
    p = Progress(0, exp.algorithm.init_server(exp.x0, exp.model.layout), {},
                 Ledger(dense_frame_bytes(exp.model.layout)), [])
    executor = Sequential()
    start = time.perf_counter()
    for t in range(cfg.rounds):
        run_round(exp, p, executor, t)
    return time.perf_counter() - start, p.rows[-1]["test_accuracy"]


def plain_rounds(exp) -> tuple[float, float]:
    """FedAvg as one would write it by hand with nn.Module and torch.optim.SGD."""
    cfg, ds = exp.config, exp.dataset
    model = build_model("lenet5", ds.input_shape, ds.num_classes, derive(cfg.seed, "init"))
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    start = time.perf_counter()
    for t in range(cfg.rounds):
        clients = sample_clients(cfg, t)
        total = sum(exp.parts[c].numel() for c in clients)
        new_state = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for c in clients:
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
            x, y = ds.x_train[exp.parts[c]], ds.y_train[exp.parts[c]]
            g = derive(cfg.seed, "plain", t, c)
            model.train()
            for idx in batches(len(y), cfg.train.batch_size, -(-len(y) // cfg.train.batch_size), g):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            weight = exp.parts[c].numel() / total
            for k, v in model.state_dict().items():
                new_state[k].add_(v, alpha=weight)
        global_state = new_state
    model.load_state_dict(global_state)
    model.eval()
    with torch.no_grad():
        acc = float((model(ds.x_test).argmax(1) == ds.y_test).float().mean())
    return time.perf_counter() - start, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    exp = setup(config(args.rounds))
    updates = args.rounds * exp.config.clients_per_round
    print(f"FedAvg, MNIST, 100 IID clients, 10 per round, LeNet-5, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads; best of {args.repeats}, alternating")
    ours, plain = [], []
    for _ in range(args.repeats):
        ours.append(fedpress_rounds(exp))
        plain.append(plain_rounds(exp))
    t_ours, acc_ours = min(ours)
    t_plain, acc_plain = min(plain)
    print(f"{'loop':>10} {'seconds':>8} {'updates/s':>10} {'test acc':>9}")
    print(f"{'plain':>10} {t_plain:>8.2f} {updates / t_plain:>10.2f} {acc_plain:>9.4f}")
    print(f"{'fedpress':>10} {t_ours:>8.2f} {updates / t_ours:>10.2f} {acc_ours:>9.4f}")
    print(f"fedpress / plain throughput: {t_plain / t_ours:.3f}x")


if __name__ == "__main__":
    main()
