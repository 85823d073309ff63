"""A run killed with SIGKILL at any moment, mid-round or in the middle of writing its
checkpoint, resumes to the uninterrupted run's outputs bit for bit (issue 16, item 10).

Each run is a separate process (`python -c SCRIPT`) on the simulator tests' synthetic
dataset with one torch thread, so the reference and the killed runs do the same sums.
The kills come at random moments drawn from a seeded generator, and at the moment a
checkpoint's temporary file appears (the write in progress)."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpress.runtime.store import DATABASE
from tests.sim.test_run import rows

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
import fedpress.runtime.experiment as experiment
from tests.sim.conftest import synthetic_dataset, tiny_config
from tests.sim.test_async import async_config
dataset = synthetic_dataset()
experiment.load = lambda name, normalize=True: dataset
from fedpress.sim import asynchronous, run
engine, out, overrides, resume = json.loads(sys.argv[1])
if engine == "rounds":
    run(tiny_config(**overrides), out, resume=resume, overwrite=not resume, progress=False)
else:
    asynchronous.run(async_config(**overrides), out, resume=resume, overwrite=not resume, progress=False)
"""

WIDE = {"model.widths": [384, 384], "checkpoint_every": 1}  # checkpoints of a few MB: a write takes a while
CASES = {
    "topk_ef": ("rounds", {**WIDE, "rounds": 8, "algorithm.name": "topk_ef", "algorithm.ratio": 0.05}),
    "scaffnew": ("rounds", {**WIDE, "rounds": 8, "algorithm.name": "scaffnew", "train.momentum": 0.0,
                            "clients_per_round": 12}),
    "qafel": ("async", {**WIDE, "rounds": 8, "algorithm.name": "qafel", "train.lr": 0.02}),
    # issue 21: the states in SQLite, committed with each checkpoint in one transaction
    "topk_ef_disk": ("rounds", {**WIDE, "rounds": 8, "algorithm.name": "topk_ef", "algorithm.ratio": 0.05,
                                "client_state.store": "disk"}),
    "qafel_disk": ("async", {**WIDE, "rounds": 8, "algorithm.name": "qafel", "train.lr": 0.02,
                             "client_state.store": "disk"}),
}


def records(out) -> set[str]:
    """The checkpoint records a disk run's database holds ("checkpoint", "final")."""
    if not (out / DATABASE).exists():
        return set()
    db = sqlite3.connect(out / DATABASE)  # opening a killed run's database recovers it, as a resume does
    try:
        return {name for (name,) in db.execute("SELECT name FROM progress")}
    except sqlite3.OperationalError:  # killed before its tables were made
        return set()
    finally:
        db.close()


def holds(out, name: str) -> bool:
    return (out / f"{name}.pt").exists() or name in records(out)


def write_marker(out):
    """What changes while a checkpoint is being written: its temporary file, or the
    database's write-ahead log (a disk store commits its states and checkpoint there)."""
    wal = out / (DATABASE + "-wal")
    return any(out.glob("checkpoint.pt*.tmp")), wal.stat().st_mtime_ns if wal.exists() else None


def start(engine, out, overrides, resume):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps([engine, str(out), overrides, resume])],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finished(out) -> bool:
    return (out / "summary.json").exists() and not holds(out, "checkpoint")


def opened(proc, out) -> float:
    """Wait until the process has started and opened its run directory; the time then."""
    deadline = time.monotonic() + 120
    while not (out / "config.toml").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    return time.monotonic()


def kill_when(proc, out, rng, mode, span: float = 0.0) -> str:
    """Kill `proc` at a random moment within `span` seconds of its start ("random"), or
    when a checkpoint write is in progress ("write"); returns what happened: "killed",
    "killed-in-write" or "finished"."""
    deadline = time.monotonic() + 120
    at = opened(proc, out) + rng.uniform(0.0, span)
    wal_before: object = "unset"  # the log as of the first checkpoint (metrics.csv is written after it)
    while proc.poll() is None and time.monotonic() < deadline:
        tmp, wal = write_marker(out)
        if wal_before == "unset" and (out / "metrics.csv").exists():
            wal_before = wal
        writing = tmp or (wal_before != "unset" and wal != wal_before)
        if (mode == "write" and writing) or (mode == "random" and time.monotonic() >= at):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "killed-in-write" if writing else "killed"
        time.sleep(0.0005)
    assert proc.wait() == 0, proc.stderr.read().decode()[-2000:]
    return "finished"


def outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    return (rows(out / "metrics.csv"), (out / "ledger.csv").read_text(), (out / "density.csv").read_text(),
            {k: v for k, v in summary.items() if k != "wall_seconds"})


@pytest.mark.parametrize("name", list(CASES))
def test_killed_at_random_moments_and_mid_checkpoint_a_run_resumes_bit_for_bit(tmp_path, name):
    engine, overrides = CASES[name]
    reference = start(engine, tmp_path / "reference", overrides, resume=False)
    began = opened(reference, tmp_path / "reference")
    assert reference.wait() == 0, reference.stderr.read().decode()[-2000:]
    span = 0.8 * (time.monotonic() - began)  # random kills fall within the run's own length

    out, rng, events = tmp_path / "killed", random.Random(f"kill-{name}"), []
    for mode in ("write", "random", "write", "random", "random", "random", "random", "random"):
        if finished(out):
            break
        resume = holds(out, "checkpoint") or holds(out, "final")
        events.append(kill_when(start(engine, out, overrides, resume), out, rng, mode, span))
    while not finished(out):  # the last start runs to the end
        resume = holds(out, "checkpoint")
        events.append(kill_when(start(engine, out, overrides, resume), out, rng, "none"))

    assert "killed-in-write" in events, events  # a checkpoint write was cut short at least once
    assert events.count("killed") + events.count("killed-in-write") >= 3, events
    assert outputs(out) == outputs(tmp_path / "reference"), events
    assert not list(out.glob("*.tmp"))  # what a cut-short write left behind was cleared on resume
