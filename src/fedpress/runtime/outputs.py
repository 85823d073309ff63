"""The run directory, written the same way by every runtime:

    DIR/config.toml     the resolved config
    DIR/metrics.csv     one row per round or server step (accuracy when evaluated, bytes, cumulative bytes)
    DIR/summary.json    final and best accuracy, total bytes and their dense equivalents
    DIR/ledger.csv      every message: round, direction, client, bytes, receivers
    DIR/density.csv     per round, the fraction of each tensor's coordinates the uploads carried
    DIR/*.png           accuracy against rounds and against cumulative MB
    DIR/checkpoint.pt   where the run stands, every `checkpoint_every` rows (removed at the end)

Here too: the metrics row's common columns (`round_row`, `close_row`), the checkpointer
(one tree of the run's progress dataclass, `fedpress.state`, no pickle) and the progress
display. The synchronous loop and both asynchronous clocks use all of them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedpress import state as state_io
from fedpress.algorithms import Uplink
from fedpress.config import Config, dumps
from fedpress.errors import ConfigError
from fedpress.layout import Layout
from fedpress.local import evaluate
from fedpress.metrics.ledger import Ledger
from fedpress.runtime.rejections import Refusal, rejections, tally

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


def due(cfg: Config, t: int) -> bool:
    """Whether round (or step) t, 0-based, is evaluated."""
    return (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds


# ---------------------------------------------------------------------------- the directory


class RunDirectory:
    """A run's directory: its resolved config, its checkpoint and its outputs."""

    def __init__(self, path: Path):
        self.path = path
        self.checkpoint = path / "checkpoint.pt"

    @classmethod
    def open(cls, cfg: Config, out: str | Path | None, resume: bool) -> tuple[RunDirectory, bool]:
        """The run directory with the resolved config written into it, and whether there is
        a checkpoint to resume from. A checkpoint of a different config is refused."""
        run = cls(Path(out) if out is not None else Path("runs") / cfg.name)
        run.path.mkdir(parents=True, exist_ok=True)
        config_text = dumps(cfg)
        found = resume and run.checkpoint.exists()
        if found:
            config = run.path / "config.toml"
            previous = config.read_text() if config.exists() else ""
            if previous != config_text:
                raise ConfigError(f"--resume: {run.path} holds a run of a different config; "
                                  f"use another --out or the same config")
        (run.path / "config.toml").write_text(config_text)
        return run, found

    def save_checkpoint(self, progress: Any) -> None:
        """The run's progress dataclass as one state tree, written atomically."""
        state_io.save({"progress": progress}, self.checkpoint)

    def load_checkpoint(self, kind: type) -> Any:
        progress = state_io.load(self.checkpoint)["progress"]
        if not isinstance(progress, kind):
            raise ConfigError(f"--resume: {self.checkpoint} holds a {type(progress).__name__}, "
                              f"not the {kind.__name__} of this engine")
        return progress

    def write_metrics(self, rows: list[dict]) -> None:
        """The fixed columns first, then any others (round_metrics, the asynchronous ones), in first-seen order."""
        extra = [k for r in rows for k in r if k not in METRIC_COLUMNS]
        with open(self.path / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS + list(dict.fromkeys(extra)))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    def after_row(self, cfg: Config, progress: Any, done: int) -> None:
        """Every `checkpoint_every` rows (not after the last), a checkpoint and metrics.csv."""
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.rounds:
            self.save_checkpoint(progress)
            self.write_metrics(progress.rows)

    def write_outputs(self, exp, p, diverged_at_round: int | None = None, **extra: Any) -> dict:
        """metrics.csv, ledger.csv, density.csv, summary.json (with `extra`) and the plots;
        the checkpoint is removed: the run is complete and its outputs are the record."""
        self.write_metrics(p.rows)
        with open(self.path / "ledger.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["round", "direction", "client", "bytes", "receivers"])
            writer.writerows(p.ledger.to_rows())
        with open(self.path / "density.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["round", *exp.wire.names])
            writer.writerows([[i + 1, *(f"{v:.6g}" for v in d)] for i, d in enumerate(p.density)])
        summary = summarize(exp, p, diverged_at_round)
        summary.update(extra)
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        from fedpress.report import plot_run

        plot_run(self.path)
        self.checkpoint.unlink(missing_ok=True)
        return summary


def summarize(exp, p, diverged_at_round: int | None = None) -> dict:
    cfg, rows = exp.config, p.rows
    accs = [r["test_accuracy"] for r in rows if r["test_accuracy"] != ""]
    last = rows[-1] if rows else dict.fromkeys(f"cum_{k}" for k in CUMULATIVE)
    last = {k: v or 0 for k, v in last.items()}
    final = accs[-1] if accs else math.nan
    if diverged_at_round is not None:  # the model the run ended with, not the last evaluated one
        final, _ = evaluate(exp.model, exp.algorithm.model(p.server), exp.dataset.x_test, exp.dataset.y_test,
                            device=exp.device)
    return {
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
        "rejected_updates": sum(r["rejected"] for r in rows),
        "rejections": rejections(rows),  # {reason: count}: see rejections.tally()
        "wall_seconds": sum(r["wall_seconds"] for r in rows),
        "diverged_at_round": diverged_at_round,  # None: the run went to the end
    }


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


class Display:
    """The progress bar of a run (rounds or server steps); nothing when disabled."""

    def __init__(self, cfg: Config, start: int, enabled: bool, unit: str = "round",
                 postfix: Callable[[list[dict]], str] = rounds_postfix):
        self.postfix = postfix
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.rounds, initial=start, desc=cfg.name, unit=unit, dynamic_ncols=True)

    def update(self, rows: list[dict]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self.postfix(rows))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
