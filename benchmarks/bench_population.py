"""Population scale (issue 21): per-client state for 100 to 1,000,000 clients on one machine.

Top-k 1% EF with LeNet-5 on MNIST, 10 clients a round, 50 rounds, at populations 100, 10,000
and 100,000 (configs/population/), FLARE at 100,000, and logistic regression at 1,000,000.
Before the timed rounds every client of the population is given a state of the real size (the
algorithm's initial state, a residual or accumulator of the model's size, written to the store
and made durable), so the rounds read and write a store that holds the whole population. Each
setup runs in its own process, with its page cache for the store's files dropped before the
rounds. Prints, per setup: the fill's seconds, the disk the store takes, the peak resident
memory during the rounds (VmHWM, reset after the fill), the mean and median seconds per round
(rounds 2 to 49: the last one evaluates; a round's time includes the checkpoint commit after
the one before), and the ratio of the mean to the 100-client in-memory run of the same model,
measured in the same invocation.

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/bench_population.py \
        [--rounds 50] [--threads 2] [--dir /tmp/fedpress_population] [--only LABEL ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# label, config, overrides, the reference its ratio is taken against
SETUPS = [
    ("topk_ef 100 memory", "topk_ef_mnist_100.toml", {"client_state.store": "memory"}, None),
    ("topk_ef 100 disk", "topk_ef_mnist_100.toml", {}, "topk_ef 100 memory"),
    ("topk_ef 10k disk", "topk_ef_mnist_10k.toml", {}, "topk_ef 100 memory"),
    ("topk_ef 100k disk", "topk_ef_mnist_100k.toml", {}, "topk_ef 100 memory"),
    ("topk_ef 100k disk fp16", "topk_ef_mnist_100k.toml", {"client_state.precision": "fp16"}, "topk_ef 100 memory"),
    ("flare 100 memory", "flare_mnist_100k.toml", {"data.num_clients": 100, "client_state.store": "memory"}, None),
    ("flare 100k disk", "flare_mnist_100k.toml", {}, "flare 100 memory"),
    ("logreg 100 memory", "logreg_mushrooms_1m.toml", {"data.num_clients": 100, "client_state.store": "memory"},
     None),
    ("logreg 1M disk", "logreg_mushrooms_1m.toml", {}, "logreg 100 memory"),
]


def vm(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def drop_page_cache(paths: list[Path]) -> None:
    """Our own files out of the kernel's page cache: the rounds read the store cold."""
    for path in paths:
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def child(label: str, config: str, overrides: dict, rounds: int, directory: Path, threads: int) -> dict:
    """One setup in this (fresh) process: fill the store, then the timed rounds."""
    import torch

    from fedpress.config import load
    from fedpress.runtime.executor import make_executor
    from fedpress.runtime.outputs import RunDirectory
    from fedpress.runtime.store import DATABASE, DiskStore, pack
    from fedpress.sim.clients import InProcessClients
    from fedpress.sim.rounds import Progress, drive, fresh, setup

    torch.set_num_threads(threads)
    sets = [f"{k}={json.dumps(v)}" for k, v in {**overrides, "rounds": rounds, "eval_every": rounds}.items()]
    cfg = load(ROOT / "configs" / "population" / config, sets)
    exp = setup(cfg)
    out = directory / label.replace(" ", "_")
    run_dir, _ = RunDirectory.open(cfg, out, Progress, overwrite=True)
    store = run_dir.client_store(cfg)

    # every client of the population holds a state of the real size: its initial one
    started = time.perf_counter()
    initial = exp.algorithm.init_client(exp.model.layout)
    population = cfg.data.num_clients
    if isinstance(store, DiskStore):
        packed = pack(initial, store.precision)
        for first in range(0, population, 1000):
            store.put_packed([(c, packed) for c in range(first, min(first + 1000, population))])
            store.commit()
        store.db.execute("COMMIT")
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.db.execute("BEGIN")
        state_bytes = len(packed)
    else:
        for c in range(population):
            store[c] = initial
        state_bytes = len(pack(initial, cfg.client_state.precision if cfg.client_state else "fp32"))
    fill = time.perf_counter() - started
    drop_page_cache([out / DATABASE, out / (DATABASE + "-wal")])
    rss_before = vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the peak below is the rounds'

    marks: list[float] = []
    p = fresh(exp, store)
    begin = time.perf_counter()
    with make_executor(exp) as executor:
        clients = InProcessClients(exp, p.clients, executor, p.replicas)
        summary = drive(exp, p, clients, run_dir, progress=False,
                        on_round_end=lambda row: marks.append(time.perf_counter()))
    ends = [begin, *marks]
    per_round = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)][1:-1]  # rounds 2..R-1
    disk = store.disk_bytes() if isinstance(store, DiskStore) else 0
    return {"label": label, "population": population, "state_bytes": state_bytes, "fill_s": fill,
            "disk_bytes": disk, "rss_before_rounds": rss_before, "peak_rss_rounds": vm("VmHWM"),
            "mean_s": statistics.fmean(per_round), "median_s": statistics.median(per_round),
            "max_s": max(per_round), "final_accuracy": summary.get("final_accuracy"),
            "final_loss": p.rows[-1].get("train_loss")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/fedpress_population"))
    parser.add_argument("--only", nargs="*", help="labels of the setups to run (their references run too)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each setup's process")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (24.7 GB each at 100k)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        label, config, overrides = json.loads(args.child)
        print(json.dumps(child(label, config, overrides, args.rounds, args.dir, args.threads)))
        return

    wanted = set(args.only or [s[0] for s in SETUPS])
    wanted |= {ref for label, _, _, ref in SETUPS if label in wanted and ref}
    results: dict[str, dict] = {}
    print(f"{'setup':<24} {'clients':>9} {'state KB':>9} {'fill s':>7} {'disk GB':>8} {'peak RSS':>9} "
          f"{'s/round':>8} {'median':>7} {'max':>6} {'vs ref':>7} {'acc/loss':>9}", flush=True)
    for label, config, overrides, ref in SETUPS:
        if label not in wanted:
            continue
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps([label, config, overrides]),
                               "--rounds", str(args.rounds), "--dir", str(args.dir), "--threads", str(args.threads)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"{label}: failed\n{proc.stderr[-3000:]}", flush=True)
            continue
        r = results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        ratio = r["mean_s"] / results[ref]["mean_s"] if ref in results else 1.0
        r["vs_reference"] = ratio
        accuracy = r["final_accuracy"]
        quality = accuracy if accuracy is not None and accuracy == accuracy else r["final_loss"]  # NaN: no test split
        print(f"{label:<24} {r['population']:>9,} {r['state_bytes'] / 1e3:>9.1f} {r['fill_s']:>7.1f} "
              f"{r['disk_bytes'] / 1e9:>8.2f} {r['peak_rss_rounds'] / 2**20:>7.0f}MB {r['mean_s']:>8.3f} "
              f"{r['median_s']:>7.3f} {r['max_s']:>6.2f} {ratio:>6.2f}x {quality:>9.4f}", flush=True)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(args.dir / label.replace(" ", "_"))], check=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
