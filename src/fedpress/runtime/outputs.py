"""The run directory, written the same way by every runtime:

    DIR/config.toml        the resolved config
    DIR/metrics.csv        one row per round or server step (accuracy when evaluated, bytes, cumulative
                           bytes), brought up to date after each evaluated row and each checkpoint
    DIR/summary.json       final and best accuracy, total bytes and their dense equivalents (strict JSON)
    DIR/ledger.csv         every message: round (1-based, as in metrics.csv), direction, client, bytes, receivers
    DIR/density.csv        per round, the fraction of each tensor's coordinates the uploads carried
    DIR/*.png              accuracy against rounds and against cumulative MB
    DIR/checkpoint.pt      where the run stands, every `checkpoint_every` rows (removed at the end)
    DIR/final.pt           the state a finished run ended with
    DIR/model.safetensors  the final model's tensors by name
    DIR/tensorboard/       each row's scalars, with `fedpress run --tensorboard` (`TensorBoard`)

docs/outputs.md is the reference.

Here too: the metrics row's common columns (`round_row`, `close_row`), the checkpointer
(one tree of the run's progress dataclass, `fedpress.state`, no pickle) and the progress
display (a bar on a terminal, one line per row otherwise). The synchronous loop and both
asynchronous clocks use all of them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedpress import state as state_io
from fedpress.algorithms import Uplink
from fedpress.config import ClientStateConfig, Config, dumps
from fedpress.errors import CheckpointError, ConfigError, RunDirectoryError
from fedpress.layout import Layout
from fedpress.local import evaluate
from fedpress.metrics.ledger import Ledger
from fedpress.runtime.rejections import Refusal, rejections, tally
from fedpress.runtime.store import DATABASE, DiskStore, memory_store, remove_database

METRIC_COLUMNS = [
    "round", "wall_seconds", "test_accuracy", "test_loss", "train_loss", "clients", "rejected", "rejected_reasons",
    "uplink_values",
    "density",
    "uplink_bytes", "downlink_bytes", "downlink_broadcast_bytes", "dense_uplink_bytes", "dense_downlink_bytes",
    "cum_uplink_bytes", "cum_downlink_bytes", "cum_downlink_broadcast_bytes", "cum_dense_uplink_bytes",
    "cum_dense_downlink_bytes",
]  # fmt: skip
CUMULATIVE = ("uplink_bytes", "downlink_bytes", "downlink_broadcast_bytes", "dense_uplink_bytes",
              "dense_downlink_bytes")


# ---------------------------------------------------------------------------- rows


def kept_per_tensor(uplinks: list[Uplink], layout: Layout) -> torch.Tensor:
    """How many values the uplinks carried for each tensor of the layout, shape (T,)."""
    counts = torch.zeros(len(layout), dtype=torch.float64)
    offsets = layout.offsets()
    for u in uplinks:
        coords = u.message.coordinates()
        if coords is None:
            counts += torch.tensor([e.numel for e in layout], dtype=torch.float64)
        else:
            counts += torch.searchsorted(coords, offsets).diff().to(torch.float64)
    return counts


def round_row(t: int, uplinks: list[Uplink], rejected: list[Refusal], losses: list[float], ledger: Ledger,
              wire: Layout, density: list[list[float]]) -> dict[str, Any]:
    """The columns every runtime writes for round (or server step) t: who was used and who
    refused (by reason), the values the uploads carried, and the ledger's bytes. Appends the
    round's per-tensor density to `density`."""
    kept = kept_per_tensor(uplinks, wire)  # (T,) values sent per tensor, summed over clients
    sizes = torch.tensor([e.numel for e in wire], dtype=torch.float64) * max(len(uplinks), 1)
    density.append((kept / sizes.clamp(min=1)).tolist())
    return {"round": t + 1, "test_accuracy": "", "test_loss": "",
            "train_loss": sum(losses) / len(losses) if losses else "",
            "clients": len(uplinks), "rejected": len(rejected), "rejected_reasons": tally(rejected),
            "uplink_values": int(kept.sum()),
            "density": float(kept.sum() / sizes.sum()) if uplinks else "",
            **ledger.round_totals(t)}


def evaluate_into(row: dict, exp, x: torch.Tensor) -> None:
    """Test accuracy and loss of the model state x, on the experiment's device."""
    acc, loss = evaluate(exp.model, x, exp.dataset.x_test, exp.dataset.y_test, device=exp.device)
    row.update(test_accuracy=acc, test_loss=loss)


def close_row(row: dict, rows: list[dict], wall: float, cumulative: tuple[str, ...] = CUMULATIVE) -> dict:
    """The cumulative columns and the wall time; the row joins `rows`."""
    previous = rows[-1] if rows else {}
    for key in cumulative:
        row[f"cum_{key}"] = previous.get(f"cum_{key}", 0) + row[key]
    row["wall_seconds"] = wall
    rows.append(row)
    return row


def warn_if_empty(row: dict, unit: str = "round") -> None:
    """Say so when a round aggregated nothing: every update was rejected (or none came)."""
    if row["clients"] == 0:
        why = f" ({row['rejected_reasons']})" if row["rejected_reasons"] else ""
        print(f"fedpress: {unit} {row['round']}: no update was accepted{why}", file=sys.stderr)


def due(cfg: Config, t: int) -> bool:
    """Whether round (or step) t, 0-based, is evaluated."""
    return (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds


# ---------------------------------------------------------------------------- the directory


OUTPUTS = ("config.toml", "metrics.csv", "summary.json", "ledger.csv", "density.csv", "checkpoint.pt", "final.pt",
           "model.safetensors", "accuracy_vs_round.png", "accuracy_vs_mb.png")
TENSORBOARD = "tensorboard"  # a directory: `TensorBoard` writes its event files there


class RunDirectory:
    """A run's directory: its resolved config, its checkpoint, its final state and its outputs.

    `checkpoint.pt` is where an unfinished run stands (every `checkpoint_every` rows);
    `final.pt` is the state a finished run ended with (the final model among it), from
    which `--resume` with more `rounds` extends the run. With `client_state.store = "disk"`
    both are records in `client_state.sqlite` instead, committed in one transaction with the
    clients' states (`runtime/store.py`): the states and the checkpoint always agree.
    """

    def __init__(self, path: Path, client_state: ClientStateConfig | None = None):
        self.path = path
        self.checkpoint = path / "checkpoint.pt"
        self.final = path / "final.pt"
        self.client_state = client_state  # the config's [client_state]
        self.store: DiskStore | None = None  # with store = "disk": its database, once opened
        self.resumed: Any = None  # the progress `open` found to go on from
        # (rows, columns) of metrics.csv as this process last wrote it; None: not written yet
        self.metrics_written: tuple[int, list[str]] | None = None

    @classmethod
    def open(cls, cfg: Config, out: str | Path | None, kind: type, *, resume: bool = False,
             overwrite: bool = False, write: bool = True) -> tuple[RunDirectory, Any]:
        """The run directory, checked before any data is loaded, with the resolved config
        written into it, and the progress (of the driver's `kind`) to go on from: None for a
        fresh start. Refused by name (RunDirectoryError, ConfigError, CheckpointError), with
        the directory left as it was: a directory that cannot be written, a run in it that
        would be overwritten without `overwrite`, `resume` with nothing to resume, a
        checkpoint of another config or a damaged one. `write=False` checks all that and
        changes nothing (a runtime that builds its experiment before it opens the directory)."""
        run = cls(Path(out) if out is not None else Path("runs") / cfg.name, cfg.client_state)
        run.check_writable()
        progress = None
        if resume:
            progress = run.resumed = run.resumable(cfg, dumps(cfg), kind)
        elif (run.path / "config.toml").exists() and not overwrite:
            raise RunDirectoryError(f"{run.path} holds a run already; --resume continues it, --overwrite "
                                    f"replaces it, or give another --out")
        if write:
            run.commit(cfg, fresh=not resume)
        return run, progress

    def commit(self, cfg: Config, fresh: bool) -> None:
        """Take the directory for the run `open` checked: a fresh run removes what an earlier
        one left (`--overwrite`), a write a kill cut short is cleared, the config written.
        A runtime calls this once everything that may refuse the config has run."""
        if fresh:
            for name in OUTPUTS:
                (self.path / name).unlink(missing_ok=True)
            self.close_store()
            remove_database(self.path)
            if (self.path / TENSORBOARD).is_dir():
                shutil.rmtree(self.path / TENSORBOARD)
        for leftover in [*self.path.glob("checkpoint.pt*.tmp"), *self.path.glob("final.pt*.tmp"),
                         *self.path.glob("metrics.csv*.tmp")]:
            leftover.unlink()  # the file it was replacing is intact
        (self.path / "config.toml").write_text(dumps(cfg))
        if not fresh and self.resumed is not None:
            # rows past the checkpoint were written live; the resumed run recomputes them identically
            self.write_metrics(self.resumed.rows)

    def check_writable(self) -> None:
        """The directory exists (made if not), can be written, and none of the names fedpress
        writes is taken by a directory."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"--out {self.path} is a file, not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as e:
            raise RunDirectoryError(f"--out {self.path} cannot be written: {e.strerror or e}") from None
        for name in OUTPUTS:
            if (self.path / name).is_dir():
                raise RunDirectoryError(f"{self.path / name} is a directory; fedpress writes its {name} there")

    def resumable(self, cfg: Config, config_text: str, kind: type) -> Any:
        """What `resume` goes on from: the checkpoint of an unfinished run of this config, or
        the final state of a finished one when `cfg` asks for more rounds."""
        config = self.path / "config.toml"
        previous = config.read_text() if config.exists() else ""
        before, now = tomllib.loads(previous), tomllib.loads(config_text)
        if previous and before.get("client_state") != now.get("client_state"):
            # where the states are decides where the checkpoint is: look no further
            raise ConfigError(f"--resume: {self.path} holds a run of a different config (its [client_state] "
                              f"differs); use another --out or the same config")
        if self.holds("checkpoint"):
            if previous != config_text:
                raise ConfigError(f"--resume: {self.path} holds a run of a different config; "
                                  f"use another --out or the same config")
            return self.load(self.checkpoint, kind)
        if not self.holds("final"):
            hint = " (the run stopped before its first checkpoint: rerun it with --overwrite)" if previous else ""
            where = f"no checkpoint record in {DATABASE}" if self.disk else "no checkpoint.pt"
            raise RunDirectoryError(f"--resume: nothing to resume in {self.path}: {where}{hint}")
        if {**before, "rounds": 0} != {**now, "rounds": 0}:
            raise ConfigError(f"--resume: {self.path} holds a finished run of a different config; "
                              f"use another --out or the same config")
        summary = self.path / "summary.json"
        if summary.exists() and json.loads(summary.read_text()).get("diverged_at_round") is not None:
            raise RunDirectoryError(f"--resume: the run in {self.path} diverged; there is no model to go on from")
        done = self.load(self.final, kind)
        if cfg.rounds <= done.round:
            raise RunDirectoryError(f"--resume: the run in {self.path} is finished ({done.round} rounds); nothing "
                                    f"to resume. To extend it, resume with more rounds (--set rounds=N, "
                                    f"N > {done.round})")
        last = done.rows[-1] if done.rows else None
        if last is not None and not due(cfg, len(done.rows) - 1):
            # its last round was evaluated because it was the last; in the longer run it is not
            last.update(test_accuracy="", test_loss="")
            for key in ("train_accuracy", "train_objective"):
                last.pop(key, None)
        return done

    # ------------------------------------------------------------ the client store

    def client_store(self, cfg: Config) -> Any:
        """The client store a fresh run starts with: a dict, a `PackedStore`, or the run's
        `DiskStore` (made empty by `commit`)."""
        cs = cfg.client_state
        if cs is None:
            return {}
        return self.database() if cs.store == "disk" else memory_store(cs.precision)

    def database(self) -> DiskStore:
        """The run's client-state database, opened once (uncommitted changes of a killed run
        are rolled back as it opens)."""
        if self.store is None:
            cs = self.client_state
            self.store = DiskStore(self.path / DATABASE, cs.precision, cs.cache_mb)
        return self.store

    @property
    def disk(self) -> bool:
        """Whether the client states and the checkpoint records live in DATABASE."""
        return self.client_state is not None and self.client_state.store == "disk"

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def holds(self, name: str) -> bool:
        """Whether the run's "checkpoint" or "final" state is there."""
        if not self.disk:
            return (self.checkpoint if name == "checkpoint" else self.final).exists()
        return (self.path / DATABASE).exists() and self.database().read(name) is not None

    # ------------------------------------------------------------ checkpoints

    def load(self, path: Path, kind: type) -> Any:
        """The progress in checkpoint.pt or final.pt (with a disk store: that record of the
        database, its client store the database)."""
        if not self.disk:
            return _of_kind(state_io.load(path)["progress"], kind, path)
        where = f"{self.path / DATABASE} ({path.stem} record)"
        data = self.database().read(path.stem)
        if data is None:
            raise CheckpointError(f"{where} is missing")
        progress = _of_kind(state_io.decode(data, where)["progress"], kind, where)
        progress.clients = self.database()
        return progress

    def save_checkpoint(self, progress: Any) -> None:
        """The run's progress dataclass as one state tree, written atomically."""
        self.save(progress, self.checkpoint)

    def save(self, progress: Any, path: Path) -> None:
        """The progress dataclass as one state tree (`fedpress.state`), written atomically;
        with a disk store, committed as the database's record "checkpoint" or "final" in one
        transaction with every client state changed since the last commit."""
        if isinstance(progress.clients, DiskStore):
            progress.clients.commit(path.stem, state_io.encode({"progress": dataclasses.replace(progress,
                                                                                                 clients={})}))
            return
        state_io.save({"progress": progress}, path)

    def write_metrics(self, rows: list[dict]) -> None:
        """metrics.csv whole, replaced atomically (a kill mid-write leaves the rows it had):
        the fixed columns first, then any others (round_metrics, the asynchronous ones), in
        first-seen order."""
        extra = [k for r in rows for k in r if k not in METRIC_COLUMNS]
        columns = METRIC_COLUMNS + list(dict.fromkeys(extra))
        tmp = self.path / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(map(csv_row, rows))
        os.replace(tmp, self.path / "metrics.csv")
        self.metrics_written = (len(rows), columns)

    def append_metrics(self, rows: list[dict]) -> None:
        """The rows metrics.csv lacks, appended; the file rewritten whole when this process has
        not written it yet (a fresh start) or a new row brings a column its header lacks. The
        file is always the first rows of the one `write_outputs` writes."""
        if self.metrics_written is None:
            return self.write_metrics(rows)
        written, columns = self.metrics_written
        new = rows[written:]
        if written > len(rows) or any(k not in columns for r in new for k in r):
            return self.write_metrics(rows)
        with open(self.path / "metrics.csv", "a", newline="") as f:
            csv.DictWriter(f, fieldnames=columns).writerows(map(csv_row, new))
        self.metrics_written = (len(rows), columns)

    def after_row(self, cfg: Config, progress: Any, done: int) -> None:
        """After each row (every runtime calls this): every `checkpoint_every` rows (not after
        the last), a checkpoint; after a checkpoint or an evaluated row, metrics.csv brought up
        to date, so that a run killed at any moment keeps every evaluated row."""
        checkpoint = cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.rounds
        if checkpoint:
            self.save_checkpoint(progress)
        if checkpoint or progress.rows[-1]["test_accuracy"] != "":
            self.append_metrics(progress.rows)

    def write_outputs(self, exp, p, diverged_at_round: int | None = None, **extra: Any) -> dict:
        """final.pt, metrics.csv, ledger.csv, density.csv, summary.json (with `extra`) and the
        plots; the checkpoint is removed."""
        self.write_metrics(p.rows)
        with open(self.path / "ledger.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["round", "direction", "client", "bytes", "receivers"])
            writer.writerows(p.ledger.to_rows())  # round 1-based: the metrics row the bytes are in
        with open(self.path / "density.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["round", *exp.wire.names])
            writer.writerows([[i + 1, *(f"{v:.6g}" for v in d)] for i, d in enumerate(p.density)])
        # the final state first: a run killed from here on resumes from its checkpoint and ends the same
        self.save(p, self.final)
        self.write_model(exp, p)
        summary = summarize(exp, p, diverged_at_round)
        summary.update(extra)
        (self.path / "summary.json").write_text(json.dumps(strict_json(summary), indent=2, allow_nan=False) + "\n")
        from fedpress.report import plot_run

        plot_run(self.path)
        self.checkpoint.unlink(missing_ok=True)  # the run is complete: final.pt and the outputs are its record
        if isinstance(p.clients, DiskStore):
            p.clients.forget("checkpoint")
        return summary

    def write_model(self, exp, p) -> None:
        """model.safetensors: the final model's tensors under their names in the module's
        state_dict, with the run in the metadata (all strings, as safetensors requires)."""
        from safetensors.torch import save

        from fedpress import __version__

        cfg = exp.config
        x = exp.algorithm.model(p.server).detach().cpu()
        # clones: safetensors refuses tensors that share memory, and the views share the flat vector
        tensors = {name: t.clone() for name, t in exp.model.tensors(x).items()}
        # the integer buffers (BatchNorm's num_batches_tracked) are not in the flat state; zeros, as the run used
        tensors.update({name: t.cpu() for name, t in exp.model.counters().items()})
        metadata = {"format": "pt", "fedpress_version": __version__, "name": cfg.name,
                    "algorithm": cfg.algorithm.name, "dataset": cfg.data.dataset, "model": cfg.model.name,
                    "rounds": str(len(p.rows)), "config": dumps(cfg)}
        (self.path / "model.safetensors").write_bytes(canonical_header(save(tensors, metadata=metadata)))


def _of_kind(progress: Any, kind: type, where: Any) -> Any:
    if not isinstance(progress, kind):
        raise CheckpointError(f"{where} holds a {type(progress).__name__}, not the {kind.__name__} of this engine")
    return progress


def canonical_header(data: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted: safetensors writes its metadata
    in a random order (a hash map), and a resumed run must end with the same bytes. The
    header stays padded with spaces to 8 bytes; the tensors' offsets count from its end."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def csv_row(row: dict) -> dict:
    """A metrics row as metrics.csv holds it: floats to 6 significant digits."""
    return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}


def strict_json(value: Any) -> Any:
    """NaN and infinities as null, at any depth: summary.json is strict JSON (a run with no
    test split has no accuracy, a run with no staleness no mean staleness)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def summarize(exp, p, diverged_at_round: int | None = None) -> dict:
    cfg, rows = exp.config, p.rows
    accs = [r["test_accuracy"] for r in rows if r["test_accuracy"] != ""]
    last = rows[-1] if rows else dict.fromkeys(f"cum_{k}" for k in CUMULATIVE)
    last = {k: v or 0 for k, v in last.items()}
    final = accs[-1] if accs else math.nan
    if diverged_at_round is not None:  # the model the run ended with, not the last evaluated one
        final, _ = evaluate(exp.model, exp.algorithm.model(p.server), exp.dataset.x_test, exp.dataset.y_test,
                            device=exp.device)
    summary = {
        "name": cfg.name,
        "algorithm": cfg.algorithm.name,
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "num_parameters": exp.model.num_params,
        "rounds": len(rows),
        "final_accuracy": final,
        "best_accuracy": max(accs) if accs else math.nan,
        "uplink_bytes": last["cum_uplink_bytes"],
        "downlink_bytes": last["cum_downlink_bytes"],
        "downlink_broadcast_bytes": last["cum_downlink_broadcast_bytes"],
        "dense_uplink_bytes": last["cum_dense_uplink_bytes"],
        "dense_downlink_bytes": last["cum_dense_downlink_bytes"],
        "uplink_compression": last["cum_dense_uplink_bytes"] / max(last["cum_uplink_bytes"], 1),
        "total_compression": (last["cum_dense_uplink_bytes"] + last["cum_dense_downlink_bytes"])
        / max(last["cum_uplink_bytes"] + last["cum_downlink_bytes"], 1),
        "uplink_values": sum(r["uplink_values"] for r in rows),
        "accepted_updates": sum(r["clients"] for r in rows),
        "rejected_updates": sum(r["rejected"] for r in rows),
        "rounds_without_updates": sum(1 for r in rows if r["clients"] == 0),  # nothing aggregated in them
        "rejections": rejections(rows),  # {reason: count}: see rejections.tally()
        "wall_seconds": sum(r["wall_seconds"] for r in rows),
        "diverged_at_round": diverged_at_round,  # None: the run went to the end
    }
    if "cum_initial_downlink_bytes" in last:  # first downloads, also counted in downlink_bytes
        summary["initial_downlink_bytes"] = last["cum_initial_downlink_bytes"]
    return summary


# ---------------------------------------------------------------------------- progress


def sent_mb(row: dict) -> str:
    return f"sent {(row['cum_uplink_bytes'] + row['cum_downlink_bytes']) / 1e6:,.2f} MB"


def rounds_postfix(rows: list[dict]) -> str:
    accs = [r["test_accuracy"] for r in rows if r["test_accuracy"] != ""]
    acc = f"acc {100 * accs[-1]:.2f}% " if accs else ""
    return f"{acc}{sent_mb(rows[-1])}"


def steps_postfix(rows: list[dict]) -> str:
    row = rows[-1]
    return f"t {row['virtual_time']:.1f} uploads {row['uploads']} {sent_mb(row)}"


def log_line(name: str, unit: str, total: int, row: dict) -> str:
    """One row as one line of a log: test accuracy and loss when evaluated, the clients'
    training loss, the virtual clock (server steps), cumulative MB each way, the row's seconds."""
    parts = [f"{name} {unit} {row['round']}/{total}:"]
    if row["test_accuracy"] != "":
        parts.append(f"acc {row['test_accuracy']:.4f} loss {row['test_loss']:.4g}")
    if row["train_loss"] != "":
        parts.append(f"train loss {row['train_loss']:.4g}")
    if "virtual_time" in row:
        parts.append(f"t {row['virtual_time']:.1f} uploads {row['uploads']}")
    parts.append(f"up {row['cum_uplink_bytes'] / 1e6:,.2f} MB down {row['cum_downlink_bytes'] / 1e6:,.2f} MB "
                 f"{row['wall_seconds']:.2f} s")
    return " ".join(parts)


class Display:
    """The progress of a run (rounds or server steps): a bar when stdout is a terminal, one
    plain line per row when it is not (a log file, a batch job: no carriage returns);
    nothing when disabled."""

    def __init__(self, cfg: Config, start: int, enabled: bool, unit: str = "round",
                 postfix: Callable[[list[dict]], str] = rounds_postfix):
        self.postfix = postfix
        self.bar = None
        self.lines = enabled and not sys.stdout.isatty()
        self.name, self.unit, self.total = cfg.name, unit, cfg.rounds
        if enabled and not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.rounds, initial=start, desc=cfg.name, unit=unit, dynamic_ncols=True)

    def update(self, rows: list[dict]) -> None:
        if self.lines:
            print(log_line(self.name, self.unit, self.total, rows[-1]), flush=True)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self.postfix(rows))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------- TensorBoard


def scalars(row: dict) -> dict[str, float]:
    """A row's scalars for TensorBoard, under their metrics.csv column names: test accuracy
    and loss (evaluated rows), the clients' training loss, cumulative bytes up, down and
    both (`cum_total_bytes`), and every numeric column beyond the fixed ones (round_metrics,
    the asynchronous clock's)."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    fixed = ("test_accuracy", "test_loss", "train_loss", "cum_uplink_bytes", "cum_downlink_bytes")
    out = {k: row[k] for k in fixed if number(row.get(k))}
    out["cum_total_bytes"] = row["cum_uplink_bytes"] + row["cum_downlink_bytes"]
    out.update({k: v for k, v in row.items() if k not in METRIC_COLUMNS and number(v)})
    return out


class TensorBoard:
    """An `on_round_end` callback that writes each row's `scalars` to `path` (DIR/tensorboard
    with `fedpress run --tensorboard`), at step = the row's round, flushed at once so a killed
    run keeps them. Needs the `tensorboard` extra: an ImportError that says so without it.
    The writer opens with the first row: a resumed run hides (purges) what a killed run wrote
    from that round on, and rewrites it identically."""

    def __init__(self, path: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's own message does not name the extra
            raise ImportError("--tensorboard needs the tensorboard package: pip install 'fedpress[tensorboard]'"
                              ) from None
        self.path, self.open_writer, self.writer = Path(path), SummaryWriter, None

    def __call__(self, row: dict) -> None:
        step = int(row["round"])
        if self.writer is None:
            self.writer = self.open_writer(str(self.path), purge_step=step if step > 1 else None)
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
