"""The synchronous simulator: rounds of sample, broadcast, train, upload, aggregate.

It knows nothing of any algorithm beyond the step functions of `algorithms.base`; it
owns the loop, the wire (through `transport.send`), the ledger, the client store,
evaluation, checkpoints and the run directory:

    DIR/config.toml     the resolved config
    DIR/metrics.csv     one row per round (accuracy when evaluated, bytes, cumulative bytes)
    DIR/summary.json    final and best accuracy, total bytes and their dense equivalents
    DIR/ledger.csv      every message: round, direction, client, bytes, receivers
    DIR/*.png           accuracy against rounds and against cumulative MB
    DIR/checkpoint.pt   server state, client states, ledger and metrics every N rounds

All randomness is derived from (seed, purpose, round, client), so a run resumed from a
checkpoint draws exactly what the uninterrupted run drew and ends with the same numbers.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedpress import state as state_io
from fedpress.algorithms import RoundContext, Uplink, build
from fedpress.config import Config, dumps
from fedpress.data import Dataset, load, partition
from fedpress.errors import ConfigError
from fedpress.local import FlatModel, evaluate
from fedpress.metrics.ledger import BROADCAST, DOWN, UP, Ledger
from fedpress.models import build_model
from fedpress.rng import derive, derive_numpy
from fedpress.sim.clients import InProcessClients
from fedpress.sim.executor import EXECUTORS
from fedpress.sim.transport import dense_frame_bytes, post
from fedpress.wire import Reason, WireError, decode

METRIC_COLUMNS = [
    "round", "wall_seconds", "test_accuracy", "test_loss", "train_loss", "clients", "rejected", "rejected_reasons",
    "uplink_values",
    "density",
    "uplink_bytes", "downlink_bytes", "downlink_broadcast_bytes", "dense_uplink_bytes", "dense_downlink_bytes",
    "cum_uplink_bytes", "cum_downlink_bytes", "cum_downlink_broadcast_bytes", "cum_dense_uplink_bytes",
    "cum_dense_downlink_bytes",
]  # fmt: skip


@dataclass(frozen=True)
class Experiment:
    """Everything a config builds once: data, partition, model, algorithm."""

    config: Config
    dataset: Dataset
    parts: list[torch.Tensor]  # one index tensor into the training set per client
    model: FlatModel
    algorithm: Any
    x0: torch.Tensor  # (d,) initial model state

    @property
    def wire(self):
        """The layout of the messages: the model state, unless the algorithm sends more
        (Scaffold's model and control variate: `wire_layout(model)`)."""
        if hasattr(self.algorithm, "wire_layout"):
            return self.algorithm.wire_layout(self.model)
        return self.model.layout


def client_partition(cfg: Config, labels: torch.Tensor) -> list[torch.Tensor]:
    """The clients' index tensors of a config: the one split its runs (and `fedpress partition`) use."""
    try:
        return partition(cfg.data.partition, labels, cfg.data.num_clients, derive_numpy(cfg.seed, "partition"),
                         **cfg.data.params)
    except ValueError as e:
        raise ConfigError(f"[data] {e}") from None


def setup(cfg: Config) -> Experiment:
    ds = load(cfg.data.dataset, normalize=cfg.data.normalize)
    parts = client_partition(cfg, ds.y_train)
    outputs = cfg.model.outputs or ds.num_classes  # outputs = 1: one logit, the binary logistic loss
    if cfg.model.outputs and ds.num_classes != 2:
        raise ConfigError(f"model.outputs = 1 (binary logistic loss) needs a two-class dataset; "
                          f"{cfg.data.dataset} has {ds.num_classes} classes")
    try:
        module = build_model(cfg.model.name, ds.input_shape, outputs, derive(cfg.seed, "init"), **cfg.model.options)
    except ValueError as e:
        raise ConfigError(f"[model] {e}") from None
    algorithm = build(cfg.algorithm.name, cfg.algorithm.params)
    if getattr(algorithm, "plain_sgd", False) and cfg.train.momentum:
        raise ConfigError(f"train.momentum = {cfg.train.momentum}: {cfg.algorithm.name} needs plain SGD local steps "
                          f"(its control variates assume x <- x - lr (g - h)); set train.momentum = 0")
    if hasattr(algorithm, "prepare_model"):  # re-parameterised models (SparsyFed's Powerprop layers)
        module = algorithm.prepare_model(module, derive(cfg.seed, "init", "reparameterise"))
    model = FlatModel.of(module)
    return Experiment(cfg, ds, parts, model, algorithm, model.initial())


@dataclass
class Progress:
    """What a checkpoint holds besides the algorithm's states."""

    round: int  # rounds completed
    server: Any
    clients: dict[int, Any]  # the client store: only clients that have state
    ledger: Ledger
    rows: list[dict]
    density: list[list[float]] = field(default_factory=list)  # per round: kept fraction of each tensor


def sample_clients(cfg: Config, round_: int) -> tuple[int, ...]:
    """Uniform without replacement, from the run seed (the same on resume)."""
    perm = torch.randperm(cfg.data.num_clients, generator=derive(cfg.seed, "sample", round_))
    return tuple(sorted(perm[: cfg.clients_per_round].tolist()))


def run_round(exp: Experiment, p: Progress, executor, t: int) -> dict:
    """One synchronous round t (0-based) of the simulator: every client in this process."""
    return server_round(exp, p, InProcessClients(exp, p.clients, executor), t)


def server_round(exp: Experiment, p: Progress, clients, t: int) -> dict:
    """One synchronous round t, from the server's side of the wire. `clients` is the fleet:
    `train(t, {client: bytes | None}) -> {client: ClientReply}` and `reply(t, clients, bytes)`
    (the simulator's InProcessClients, or Flower's nodes). Updates p in place; returns the
    metrics row. Every byte that leaves or reaches the server is counted here."""
    cfg, alg, model = exp.config, exp.algorithm, exp.model
    started = time.perf_counter()
    sampled = sample_clients(cfg, t)
    rctx = RoundContext(t, cfg.seed, sampled, model, cfg.data.num_clients)

    wire = exp.wire  # what messages are laid out as: the model state, or more (Scaffold)
    down, server = alg.broadcast(p.server, rctx)
    with _diverged_if_not_finite(t, "the broadcast"):
        downlinks = post_downlinks(down if isinstance(down, dict) else dict.fromkeys(sampled, down), wire, p.ledger, t)
    replies = clients.train(t, {c: downlinks.get(c) for c in sampled})

    uplinks, rejected, losses = [], [], []
    for c in sampled:  # client-id order, whatever order the replies came in
        reply = replies.get(c)
        if reply is None:
            rejected.append(NO_REPLY)  # lost: the node failed or the round timed out
            continue
        if reply.data is not None:  # what crossed is counted, used or not
            p.ledger.record(t, UP, c, len(reply.data))
        if reply.refused or reply.data is None:
            rejected.append(reply.refused or "REFUSED")  # refused at the client (diverged, fp16 overflow), or bad
            continue
        try:
            arrived = decode(reply.data, wire)
        except WireError as e:  # corrupt or foreign bytes: counted, never aggregated
            rejected.append(e.reason.name)
            print(f"fedpress: round {t + 1}: client {c}'s update rejected: {e}", file=sys.stderr)
            continue
        uplinks.append(Uplink(c, arrived, float(reply.num_samples)))
        losses.append(reply.loss)
    p.server = alg.aggregate(server, uplinks, rctx)
    if hasattr(alg, "reply") and uplinks:  # the server answers the clients that uploaded (Scaffnew's x_bar)
        with _diverged_if_not_finite(t, "the server's reply"):
            data = post(alg.reply(p.server, rctx), wire, p.ledger, t, DOWN, BROADCAST, receivers=len(uplinks))
        clients.reply(t, [u.client for u in uplinks], data)
    extra = alg.round_metrics(server, p.server, uplinks, rctx) if hasattr(alg, "round_metrics") else {}

    kept = kept_per_tensor(uplinks, wire)  # (T,) values sent per tensor, summed over clients
    sizes = torch.tensor([e.numel for e in wire], dtype=torch.float64) * max(len(uplinks), 1)
    p.density.append((kept / sizes.clamp(min=1)).tolist())
    row: dict[str, Any] = {"round": t + 1, "test_accuracy": "", "test_loss": "",
                           "train_loss": sum(losses) / len(losses) if losses else "",
                           "clients": len(uplinks), "rejected": len(rejected), "rejected_reasons": tally(rejected),
                           "uplink_values": int(kept.sum()),
                           "density": float(kept.sum() / sizes.sum()) if uplinks else "",
                           **p.ledger.round_totals(t), **extra}
    if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
        acc, loss = evaluate(model, alg.model(p.server), exp.dataset.x_test, exp.dataset.y_test)
        row.update(test_accuracy=acc, test_loss=loss)
    previous = p.rows[-1] if p.rows else {}
    for key in ("uplink_bytes", "downlink_bytes", "downlink_broadcast_bytes", "dense_uplink_bytes",
                "dense_downlink_bytes"):
        row[f"cum_{key}"] = previous.get(f"cum_{key}", 0) + row[key]
    row["wall_seconds"] = time.perf_counter() - started
    p.round = t + 1
    p.rows.append(row)
    return row


NO_REPLY = "NO_REPLY"


def tally(reasons: list[str]) -> str:
    """Why the round's rejected updates were left out, "REASON:count; ..." in first-seen
    order: a WireError reason name (the server's decoder refused the bytes), NO_REPLY (lost),
    or what the client refused to send for (NON_FINITE_RESULT, NON_FINITE)."""
    return "; ".join(f"{reason}:{n}" for reason, n in Counter(reasons).items())


def rejections(rows: list[dict]) -> dict[str, int]:
    """The rows' rejected_reasons summed over the run: {reason: count}."""
    total: Counter[str] = Counter()
    for row in rows:
        for item in filter(None, str(row.get("rejected_reasons", "")).split("; ")):
            reason, n = item.rsplit(":", 1)
            total[reason] += int(n)
    return dict(total)


class Diverged(RuntimeError):
    """The server's model went non-finite: nothing more can be sent."""

    def __init__(self, round_: int, what: str):
        super().__init__(f"round {round_ + 1}: {what} holds NaN or infinite values; the run diverged")
        self.round = round_


@contextmanager
def _diverged_if_not_finite(round_: int, what: str):
    try:
        yield
    except WireError as e:
        if e.reason is Reason.NON_FINITE:
            raise Diverged(round_, what) from e
        raise


def post_downlinks(down: dict, wire, ledger: Ledger, t: int) -> dict[int, bytes]:
    """Encode and count the round's downlink {client: Message}. Clients missing from it
    already hold what they need (their state says so). One Message object given to several
    clients is one multicast: encoded and counted once with its number of receivers, and
    every receiver gets the same bytes object."""
    groups: dict[int, list[int]] = {}
    for c, msg in down.items():
        groups.setdefault(id(msg), []).append(c)
    out = {}
    for clients in groups.values():
        msg = down[clients[0]]
        if len(clients) == 1:
            out[clients[0]] = post(msg, wire, ledger, t, DOWN, clients[0])
        else:
            out.update(dict.fromkeys(clients, post(msg, wire, ledger, t, DOWN, BROADCAST, receivers=len(clients))))
    return out


def kept_per_tensor(uplinks: list[Uplink], layout) -> torch.Tensor:
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


def run(
    cfg: Config,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_round_end: Callable[[dict], None] | None = None,
) -> dict:
    """Run a config to the end (or resume it), write the run directory, return the summary."""
    exp = setup(cfg)
    out_dir, p = prepare(exp, out, resume)
    clients = InProcessClients(exp, p.clients, EXECUTORS[cfg.executor]())
    return drive(exp, p, clients, out_dir, progress=progress, on_round_end=on_round_end)


def run_dir(cfg: Config, out: str | Path | None, resume: bool) -> tuple[Path, Path | None]:
    """The run directory, with the resolved config written into it, and the checkpoint to
    resume from (None: start afresh). A checkpoint of a different config is refused. Both
    engines, synchronous and asynchronous, open their runs here."""
    out_dir = Path(out) if out is not None else Path("runs") / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint.pt"
    config_text = dumps(cfg)
    found = resume and checkpoint.exists()
    if found:
        previous = (out_dir / "config.toml").read_text() if (out_dir / "config.toml").exists() else ""
        if previous != config_text:
            raise ConfigError(f"--resume: {out_dir} holds a run of a different config; "
                              f"use another --out or the same config")
    (out_dir / "config.toml").write_text(config_text)
    return out_dir, checkpoint if found else None


def prepare(exp: Experiment, out: str | Path | None, resume: bool) -> tuple[Path, Progress]:
    """The run directory and where the run stands: a fresh start, or its checkpoint (--resume)."""
    out_dir, checkpoint = run_dir(exp.config, out, resume)
    if checkpoint is not None:
        return out_dir, _load_checkpoint(checkpoint)
    ledger = Ledger(dense_frame_bytes(exp.model.layout))
    return out_dir, Progress(0, exp.algorithm.init_server(exp.x0, exp.model.layout), {}, ledger, [])


def drive(exp: Experiment, p: Progress, clients, out_dir: Path, *, progress: bool = True,
          on_round_end: Callable[[dict], None] | None = None) -> dict:
    """The rounds from where p stands to the end over a fleet of clients, with checkpoints;
    then the outputs. The simulator and the Flower ServerApp both run this loop."""
    cfg, checkpoint = exp.config, out_dir / "checkpoint.pt"
    bar = _progress_bar(cfg, p.round, progress)
    diverged = None
    for t in range(p.round, cfg.rounds):
        try:
            row = server_round(exp, p, clients, t)
        except Diverged as e:  # keep what was measured: the outputs end at the last whole round
            p.ledger.entries = [entry for entry in p.ledger.entries if entry.round < t]
            diverged = t + 1
            print(f"fedpress: {e}; writing the {t} rounds before it", file=sys.stderr)
            break
        if on_round_end is not None:  # before the checkpoint: what it adds to the row is kept on resume
            on_round_end(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(_postfix(p.rows))
        if cfg.checkpoint_every and (t + 1) % cfg.checkpoint_every == 0 and t + 1 < cfg.rounds:
            _save_checkpoint(p, checkpoint)
            write_metrics(p.rows, out_dir / "metrics.csv")
    if bar is not None:
        bar.close()
    summary = write_outputs(exp, p, out_dir, diverged_at_round=diverged)
    checkpoint.unlink(missing_ok=True)  # the run is complete; its outputs are the record
    return summary


def _progress_bar(cfg: Config, start: int, enabled: bool, unit: str = "round"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.rounds, initial=start, desc=cfg.name, unit=unit, dynamic_ncols=True)


def _postfix(rows: list[dict]) -> str:
    accs = [r["test_accuracy"] for r in rows if r["test_accuracy"] != ""]
    mb = (rows[-1]["cum_uplink_bytes"] + rows[-1]["cum_downlink_bytes"]) / 1e6
    acc = f"acc {100 * accs[-1]:.2f}% " if accs else ""
    return f"{acc}sent {mb:,.2f} MB"


def _save_checkpoint(p: Progress, path: Path) -> None:
    state_io.save({"round": p.round, "server": p.server, "clients": p.clients, "dense_bytes": p.ledger.dense_bytes,
                   "ledger": p.ledger.to_rows(), "rows": p.rows,
                   "density": p.density}, path)


def _load_checkpoint(path: Path) -> Progress:
    d = state_io.load(path)
    return Progress(d["round"], d["server"], d["clients"], Ledger.from_rows(d["dense_bytes"], d["ledger"]), d["rows"],
                    d["density"])


def write_metrics(rows: list[dict], path: Path) -> None:
    """The fixed columns first, then any an algorithm adds (round_metrics), in first-seen order."""
    extra = [k for r in rows for k in r if k not in METRIC_COLUMNS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS + list(dict.fromkeys(extra)))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def write_outputs(exp: Experiment, p: Progress, out_dir: Path, diverged_at_round: int | None = None) -> dict:
    cfg, rows = exp.config, p.rows
    write_metrics(rows, out_dir / "metrics.csv")
    with open(out_dir / "ledger.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["round", "direction", "client", "bytes", "receivers"])
        writer.writerows(p.ledger.to_rows())
    with open(out_dir / "density.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["round", *exp.wire.names])
        writer.writerows([[i + 1, *(f"{v:.6g}" for v in d)] for i, d in enumerate(p.density)])
    accs = [r["test_accuracy"] for r in rows if r["test_accuracy"] != ""]
    last = rows[-1] if rows else dict.fromkeys(f"cum_{k}" for k in (
        "uplink_bytes", "downlink_bytes", "downlink_broadcast_bytes", "dense_uplink_bytes", "dense_downlink_bytes"))
    last = {k: v or 0 for k, v in last.items()}
    final = accs[-1] if accs else math.nan
    if diverged_at_round is not None:  # the model the run ended with, not the last evaluated one
        final, _ = evaluate(exp.model, exp.algorithm.model(p.server), exp.dataset.x_test, exp.dataset.y_test)
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
        "rejected_updates": sum(r["rejected"] for r in rows),
        "rejections": rejections(rows),  # {reason: count}: see tally()
        "wall_seconds": sum(r["wall_seconds"] for r in rows),
        "diverged_at_round": diverged_at_round,  # None: the run went to the end
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        from fedpress.report import plot_run

        plot_run(out_dir)
    except ImportError:  # pragma: no cover - report ships with the package
        pass
    return summary


__all__ = ["Experiment", "Progress", "run", "run_round", "sample_clients", "setup"]
