"""The client store: each client's algorithm state (residual, accumulator, control variate,
g_i, EMA thresholds), from the round a client is first sampled on.

Three stores behind one mapping {client: state}, chosen by the config's [client_state] table:

    memory, fp32        a dict (the default): every state a Python object, in the checkpoint
    memory, fp16|bf16   `PackedStore`: each state as its exact bytes with its float32 tensors
                        narrowed; half the memory, in the checkpoint
    disk                `DiskStore`: SQLite, one row per client; only the round's states are
                        in memory (plus SQLite's bounded page cache); the checkpoint lives in
                        the same database and commits in the same transaction as the states

Why SQLite (docs/architecture.md, "The client store"; the measurements are in
docs/notes/state_store.md): at 100,000 clients of LeNet-5's size its per-round cost was flat
in the population (18.7 ms median for 10 reads and writes and a durable commit, the same as
at 10,000), its memory did not grow with the population, one COMMIT is atomic and durable
(WAL, synchronous=FULL: one fsync), and it is in Python's standard library. The flat file
with its own redo journal was as fast but is ours to get right; LMDB and the memory-mapped
array read slower at 100,000 (page faults on a 12 GB mapping) and keep read pages resident.

Durability. Between two checkpoints the store's changes stay in one open transaction;
`commit(name, checkpoint)` writes the run's checkpoint record ("checkpoint", or "final" at
the end, which is the checkpoint too until the outputs are written) and commits both. A run
killed at any moment, in a round or in a write, reopens the database at its last commit:
the states and the checkpoint of the same round, which resume to the uninterrupted run's
outputs bit for bit.

Precision. `precision = "fp16"|"bf16"` stores every float32 tensor of a state in that type
and gives it back as float32: a residual e is kept as fl16(e), so error feedback carries
e − fl16(e) less than exact (|e − fl16(e)| ≤ 2⁻¹¹|e| for fp16 in its normal range, 2⁻⁸|e|
for bf16; fp16 flushes |e| < 6e-8 to zero, and values beyond ±65504 are clamped to it). It
is a choice the user makes explicitly; the default keeps states exact.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedpress import state as state_io
from fedpress.errors import CheckpointError, ConfigError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NARROWED = "__narrowed__"  # a float32 tensor stored in a narrower type: widened back when read
DATABASE = "client_state.sqlite"  # in the run directory
FP16_MAX = torch.finfo(torch.float16).max  # 65504
PAGE_SIZE = 65536  # 64 KiB pages: a LeNet-5 state is a few pages, and the WAL checkpoints rarely


def pack(state: Any, precision: str = "fp32") -> bytes:
    """A client state as exact bytes (`state.to_bytes`), its float32 tensors narrowed to `precision`."""
    tree = state_io.to_tree(state)
    if precision != "fp32":
        tree = _narrow(tree, PRECISIONS[precision])
    return state_io.tree_to_bytes(tree)


def unpack(data: bytes) -> Any:
    """The state `pack` wrote, narrowed tensors widened back to float32."""
    return state_io.from_tree(_widen(state_io.tree_from_bytes(data)))


def _narrow(node: Any, dtype: torch.dtype) -> Any:
    if isinstance(node, torch.Tensor):
        if node.dtype != torch.float32:
            return node
        if dtype == torch.float16:  # saturate: a residual beyond fp16's range stays finite (and its client usable)
            node = node.clamp(-FP16_MAX, FP16_MAX)
        return {_NARROWED: node.to(dtype)}
    if isinstance(node, list):
        return [_narrow(x, dtype) for x in node]
    if isinstance(node, dict):
        return {k: _narrow(v, dtype) for k, v in node.items()}
    return node


def _widen(node: Any) -> Any:
    if isinstance(node, list):
        return [_widen(x) for x in node]
    if isinstance(node, dict):
        if _NARROWED in node:
            return node[_NARROWED].to(torch.float32)
        return {k: _widen(v) for k, v in node.items()}
    return node


@dataclass
class PackedStore(MutableMapping):
    """Client states in memory as their packed bytes, float32 tensors narrowed to `precision`.
    A dataclass of a str and a dict of bytes: the checkpoint holds it as it is."""

    precision: str
    packed: dict[int, bytes] = field(default_factory=dict)

    def __getitem__(self, client: int) -> Any:
        return unpack(self.packed[client])

    def __setitem__(self, client: int, state: Any) -> None:
        self.packed[client] = pack(state, self.precision)

    def __delitem__(self, client: int) -> None:
        del self.packed[client]

    def __contains__(self, client: object) -> bool:
        return client in self.packed

    def __iter__(self) -> Iterator[int]:
        return iter(self.packed)

    def __len__(self) -> int:
        return len(self.packed)


class DiskStore(MutableMapping):
    """Client states in SQLite (`states(client INTEGER PRIMARY KEY, state BLOB)`, each a
    packed state), with the run's checkpoint records (`progress(name, data)`) beside them.

    Reads and writes between two commits belong to one open transaction: they see each
    other, and none of them is durable until `commit`. `cache_mb` bounds SQLite's page cache;
    a transaction larger than it spills to the write-ahead log, not to memory."""

    def __init__(self, path: str | Path, precision: str = "fp32", cache_mb: int = 64):
        self.path, self.precision = Path(path), precision
        new = not self.path.exists()
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if new:
                self.db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")  # COMMIT returns once the WAL is on disk
            self.db.execute(f"PRAGMA cache_size = {-1024 * cache_mb}")  # negative: KiB
            self.db.execute("CREATE TABLE IF NOT EXISTS states (client INTEGER PRIMARY KEY, state BLOB NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS progress (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
            self.db.execute("BEGIN")
        except sqlite3.DatabaseError as e:
            raise CheckpointError(f"{self.path} is not a readable client-state database: {e}") from None

    # ------------------------------------------------------------ the mapping

    def __getitem__(self, client: int) -> Any:
        try:
            row = self.db.execute("SELECT state FROM states WHERE client = ?", (int(client),)).fetchone()
        except sqlite3.DatabaseError as e:
            raise CheckpointError(f"{self.path} is damaged (reading client {client}): {e}") from None
        if row is None:
            raise KeyError(client)
        try:
            return unpack(row[0])
        except ValueError as e:
            raise CheckpointError(f"{self.path}: the state of client {client} is damaged: {e}") from None

    def __setitem__(self, client: int, state: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO states (client, state) VALUES (?, ?)",
                        (int(client), pack(state, self.precision)))

    def __delitem__(self, client: int) -> None:
        if self.db.execute("DELETE FROM states WHERE client = ?", (int(client),)).rowcount == 0:
            raise KeyError(client)

    def __contains__(self, client: object) -> bool:
        try:
            key = operator.index(client)  # numpy and torch integers too, as a dict would take them
        except TypeError:
            return False
        return self.db.execute("SELECT 1 FROM states WHERE client = ?", (key,)).fetchone() is not None

    def __iter__(self) -> Iterator[int]:
        return (row[0] for row in self.db.execute("SELECT client FROM states ORDER BY client").fetchall())

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM states").fetchone()[0]

    # ------------------------------------------------------------ commits

    def put_packed(self, rows: list[tuple[int, bytes]]) -> None:
        """States already packed (`pack`), written as they are."""
        self.db.executemany("INSERT OR REPLACE INTO states (client, state) VALUES (?, ?)", rows)

    def commit(self, name: str | None = None, checkpoint: bytes | None = None) -> None:
        """Make every change since the last commit durable, with the checkpoint record `name`
        ("checkpoint" or "final") in the same transaction. "final" is the checkpoint too, until
        the run's outputs are written (`forget`): a run killed in between resumes from the
        final state and writes them, never from an older checkpoint onto newer states."""
        if name is not None:
            for record in ("checkpoint", "final") if name == "final" else (name,):
                self.db.execute("INSERT OR REPLACE INTO progress (name, data) VALUES (?, ?)", (record, checkpoint))
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def forget(self, name: str) -> None:
        """The record `name` removed, durably (a finished run's checkpoint, once its outputs are written)."""
        self.db.execute("DELETE FROM progress WHERE name = ?", (name,))
        self.commit()

    def read(self, name: str) -> bytes | None:
        """The committed checkpoint record `name`, or None."""
        try:
            row = self.db.execute("SELECT data FROM progress WHERE name = ?", (name,)).fetchone()
        except sqlite3.DatabaseError as e:
            raise CheckpointError(f"{self.path} is damaged (reading its {name} record): {e}") from None
        return None if row is None else bytes(row[0])

    def disk_bytes(self) -> int:
        """Bytes the database and its write-ahead log take on disk."""
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        return sum(f.stat().st_blocks * 512 for f in files if f.exists())

    def close(self) -> None:
        """Close, dropping what was not committed (what a kill would drop too)."""
        if self.db is not None:
            self.db.close()
            self.db = None

    def __repr__(self) -> str:
        return f"DiskStore({str(self.path)!r}, precision={self.precision!r})"


def memory_store(precision: str = "fp32") -> MutableMapping:
    """The in-memory store: a dict, or a `PackedStore` when the states are narrowed."""
    return {} if precision == "fp32" else PackedStore(precision)


def refuse_client_state(cfg) -> None:
    """[client_state] is the simulator's store; Flower's nodes keep their own clients' states."""
    if cfg.client_state is not None:
        raise ConfigError("[client_state] sets where the simulator keeps its clients' states; on Flower each "
                          "node keeps its own client's state in its Context.state: remove the table")


def remove_database(directory: Path) -> None:
    """A disk store's files in a run directory, gone (a fresh run)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        (directory / (DATABASE + suffix)).unlink(missing_ok=True)


__all__ = ["DATABASE", "PRECISIONS", "DiskStore", "PackedStore", "memory_store", "pack", "refuse_client_state",
           "remove_database", "unpack"]
