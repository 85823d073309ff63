"""Per-client state store benchmark for issue 21 (100,000 clients with per-client state).

Measures embedded storage engines for the access pattern of per-client algorithm state
(e.g. error-feedback residuals): N fixed-size rows of d values, of which only the ~10
clients sampled in a round are read, modified, written back and committed durably.

Engines (each in its own child process, so that ru_maxrss is per engine and per phase):

  mmap    one flat file: 4 KiB header (N, d, dtype, committed round, CRC), one byte per
          client saying "has state", then an (N, d) row array.  Reads go through
          numpy.memmap; writes use os.pwrite.  Commit = redo journal: the round's rows,
          ids and round number go to journal.bin with a CRC, fsync (this is the commit
          point), then the rows, "has state" bytes and header round are written in place
          and the data file is fsynced.  Opening replays a journal whose CRC is valid and
          whose round is >= the header's (replay is idempotent); a torn journal is ignored.
  flatfile  the same file format and journal as mmap, but rows are read with os.pread (no
          mapping, so read rows do not stay in the process's RSS as mapped file pages).
  sqlite  stdlib sqlite3, table states(id INTEGER PRIMARY KEY, v BLOB), WAL mode,
          synchronous=FULL, one BEGIN IMMEDIATE ... COMMIT per round; the committed round
          number is written in the same transaction (table meta).
  lmdb    py-lmdb (skipped if not importable), one value per client (4-byte big-endian key),
          sync=True, one write transaction per round; round number in the same transaction.

Phases per engine: fill N clients (time, disk), then R rounds of "read k random clients
(seeded numpy Generator), modify, write back, commit durably" (s/round median and p90,
peak RSS, disk), then reopen and compare every modified client bit for bit with a
reference rebuilt in memory, then a crash test on a small separate store: SIGKILL a child
at fixed points inside a round's writes and at random moments, reopen, and check that every
client equals either the previous round's or the new round's state, consistently.
Store files are deleted at the end unless --keep.

    .venv/bin/python benchmarks/bench_state_store.py --clients 10000 --dim 61706 \\
        --rounds 50 --dtype float32 --dir /tmp/state_store
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib

import numpy as np

try:  # optional: pip install lmdb
    import lmdb
except ImportError:  # pragma: no cover
    lmdb = None

ENGINES = ("mmap", "flatfile", "sqlite", "lmdb")
GB = 1e9


# ---------------------------------------------------------------- helpers

def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_usage(path: str) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of all files under path."""
    alloc = apparent = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


def evict_cache(path: str) -> None:
    """Drop the page cache of our own store files only (clean pages), for cold reads."""
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_breakdown_mb() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024
    return out


def raw(a: np.ndarray) -> np.ndarray:
    """Bit view for exact comparison (NaN-safe, -0.0-safe)."""
    return np.ascontiguousarray(a).view(np.uint8)


class Values:
    """Deterministic fill values and update rule shared by workers and verifiers."""

    def __init__(self, d: int, dtype: str, seed: int):
        self.d, self.dtype, self.seed = d, np.dtype(dtype), seed
        self._base = None

    @property
    def base(self) -> np.ndarray:
        if self._base is None:
            self._base = np.random.default_rng([self.seed, 1]).standard_normal((64, self.d), np.float32)
        return self._base

    def fill_chunk(self, i0: int, i1: int) -> np.ndarray:
        idx = np.arange(i0, i1)
        rows = self.base[idx % 64] + (idx.astype(np.float32) * np.float32(1e-3))[:, None]
        return rows.astype(self.dtype)

    def fill_row(self, i: int) -> np.ndarray:
        return self.fill_chunk(i, i + 1)[0]

    def crash_row(self, r: int, c: int) -> np.ndarray:
        """State of client c as written by crash-test round r (r = 0: the fill)."""
        return (self.base[c % 64] + np.float32(r) + np.float32(c) * np.float32(1e-3)).astype(self.dtype)

    def round_plan(self, n: int, k: int, r: int):
        rng = np.random.default_rng([self.seed, 2, r])
        return rng, rng.choice(n, k, replace=False)

    def modify(self, old: np.ndarray, rng) -> np.ndarray:
        # error-feedback-like update: decay the residual and add this round's new error
        noise = rng.standard_normal(self.d, dtype=np.float32)
        return (old.astype(np.float32) * np.float32(0.5) + noise).astype(self.dtype)


class Killed(Exception):
    pass


# ---------------------------------------------------------------- engines

class MmapStore:
    """Flat (N, d) file + has-state bytes + redo journal (see module docstring)."""

    MAGIC, JMAGIC = b"FPSTATE1", b"FPJRNL01"
    HDR = struct.Struct("<8sqqqq")   # magic, N, d, itemsize, round   (+ crc32 u32)
    JHDR = struct.Struct("<8sqqqqq")  # magic, round, k, d, itemsize, payload_len (+ crc32)

    def __init__(self, path: str, n: int, d: int, dtype: str, create: bool = False, journal: bool = True,
                 read_mode: str = "memmap"):
        self.path, self.n, self.d, self.dtype = path, n, d, np.dtype(dtype)
        self.read_mode = read_mode
        self.row = d * self.dtype.itemsize
        self.bitmap_off = 4096
        self.rows_off = self.bitmap_off + ((n + 4095) // 4096) * 4096
        self.data_path = os.path.join(path, "states.bin")
        self.jpath = os.path.join(path, "journal.bin")
        self.journal, self.hook = journal, None
        if create:
            os.makedirs(path, exist_ok=True)
            fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(fd, self.rows_off + n * self.row)  # sparse: absent clients cost no disk
            os.close(fd)
        self.fd = os.open(self.data_path, os.O_RDWR)
        if create:
            self._write_header(0)
            os.fsync(self.fd)
            fsync_dir(path)
        self.round = self._read_header()
        self.jfd = os.open(self.jpath, os.O_RDWR | os.O_CREAT, 0o644)
        if create:
            fsync_dir(path)
        self._recover()
        self.mm = None
        if read_mode == "memmap":
            self.mm = np.memmap(self.data_path, dtype=self.dtype, mode="r", offset=self.rows_off, shape=(n, d))

    def _h(self, stage: str) -> None:
        if self.hook:
            self.hook(stage)

    def _write_header(self, rnd: int) -> None:
        h = self.HDR.pack(self.MAGIC, self.n, self.d, self.dtype.itemsize, rnd)
        os.pwrite(self.fd, h + struct.pack("<I", zlib.crc32(h)), 0)

    def _read_header(self) -> int:
        b = os.pread(self.fd, self.HDR.size + 4, 0)
        magic, n, d, item, rnd = self.HDR.unpack(b[:self.HDR.size])
        (crc,) = struct.unpack("<I", b[self.HDR.size:])
        if magic != self.MAGIC or crc != zlib.crc32(b[:self.HDR.size]) or (n, d, item) != (
                self.n, self.d, self.dtype.itemsize):
            raise RuntimeError("bad store header")
        return rnd

    def _read_journal(self):
        size = os.fstat(self.jfd).st_size
        hs = self.JHDR.size + 4
        if size < hs:
            return None
        b = os.pread(self.jfd, size, 0)
        magic, rnd, k, d, item, plen = self.JHDR.unpack(b[:self.JHDR.size])
        (crc,) = struct.unpack("<I", b[self.JHDR.size:hs])
        if magic != self.JMAGIC or d != self.d or item != self.dtype.itemsize or plen != size - hs \
                or plen != k * 8 + k * self.row:
            return None
        if zlib.crc32(b[hs:], zlib.crc32(b[:self.JHDR.size])) != crc:
            return None
        ids = np.frombuffer(b, np.int64, k, hs)
        rows = np.frombuffer(b, self.dtype, k * self.d, hs + 8 * k).reshape(k, self.d)
        return rnd, ids, rows

    def _recover(self) -> None:
        j = self._read_journal()
        if j is not None and j[0] >= self.round:
            self._apply(*j)

    def _apply(self, rnd: int, ids, rows) -> None:
        for n_done, (i, row) in enumerate(zip(ids, rows, strict=True)):
            os.pwrite(self.fd, row.tobytes(), self.rows_off + int(i) * self.row)
            os.pwrite(self.fd, b"\x01", self.bitmap_off + int(i))
            if n_done + 1 == len(ids) // 2:
                self._h("apply_partial")
        self._h("applied")
        self._write_header(rnd)
        os.fsync(self.fd)
        self.round = rnd

    def fill(self, n: int, chunk_fn, chunk: int = 128) -> None:
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            os.pwrite(self.fd, chunk_fn(i0, i1).tobytes(), self.rows_off + i0 * self.row)
        os.pwrite(self.fd, b"\x01" * n, self.bitmap_off)
        os.fsync(self.fd)

    def read(self, ids) -> list:
        # absent clients (has-state byte 0) read as zeros; sparse file regions are zeros anyway
        if self.mm is not None:
            return [np.array(self.mm[int(i)]) for i in ids]
        return [np.frombuffer(os.pread(self.fd, self.row, self.rows_off + int(i) * self.row), self.dtype)
                for i in ids]

    def commit(self, rnd: int, updates: dict) -> None:
        ids = np.fromiter(updates, np.int64, len(updates))
        if not self.journal:  # negative control: in-place writes, no commit point
            self._apply(rnd, ids, [updates[int(i)] for i in ids])
            return
        rows = [np.ascontiguousarray(updates[int(i)], self.dtype) for i in ids]
        k = len(ids)
        h = self.JHDR.pack(self.JMAGIC, rnd, k, self.d, self.dtype.itemsize, k * 8 + k * self.row)
        crc = zlib.crc32(ids.tobytes(), zlib.crc32(h))
        for r in rows:
            crc = zlib.crc32(r, crc)
        hs = self.JHDR.size + 4
        os.pwrite(self.jfd, h + struct.pack("<I", crc) + ids.tobytes(), 0)
        off = hs + 8 * k
        for n_done, r in enumerate(rows):
            os.pwrite(self.jfd, r.tobytes(), off + n_done * self.row)
            if n_done + 1 == k // 2:
                self._h("journal_partial")
        os.ftruncate(self.jfd, hs + 8 * k + k * self.row)
        os.fsync(self.jfd)                       # commit point
        self._h("journal_synced")
        self._apply(rnd, ids, rows)

    def committed_round(self) -> int:
        return self.round

    def close(self) -> None:
        self.mm = None
        os.close(self.fd)
        os.close(self.jfd)


class SqliteStore:
    def __init__(self, path: str, n: int, d: int, dtype: str, create: bool = False, page_size: int = 65536):
        self.n, self.d, self.dtype, self.hook = n, d, np.dtype(dtype), None
        if create:
            os.makedirs(path, exist_ok=True)
        self.db = sqlite3.connect(os.path.join(path, "states.sqlite"), isolation_level=None)
        if create:
            self.db.execute(f"PRAGMA page_size={int(page_size)}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        if create:
            self.db.execute("CREATE TABLE states(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            self.db.execute("CREATE TABLE meta(k TEXT PRIMARY KEY, v INTEGER)")
            self.db.execute("INSERT INTO meta VALUES('round', 0)")

    def _h(self, stage: str) -> None:
        if self.hook:
            self.hook(stage)

    def fill(self, n: int, chunk_fn, chunk: int = 128) -> None:
        self.db.execute("PRAGMA synchronous=NORMAL")
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            rows = chunk_fn(i0, i1)
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO states VALUES(?, ?)",
                                ((i0 + j, rows[j].tobytes()) for j in range(i1 - i0)))
            self.db.execute("COMMIT")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def read(self, ids) -> list:
        out = []
        for i in ids:
            row = self.db.execute("SELECT v FROM states WHERE id=?", (int(i),)).fetchone()
            out.append(np.zeros(self.d, self.dtype) if row is None else np.frombuffer(row[0], self.dtype))
        return out

    def commit(self, rnd: int, updates: dict) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for n_done, (i, v) in enumerate(updates.items()):
                self.db.execute("INSERT INTO states VALUES(?, ?) ON CONFLICT(id) DO UPDATE SET v=excluded.v",
                                (int(i), np.ascontiguousarray(v, self.dtype).tobytes()))
                if n_done + 1 == len(updates) // 2:
                    self._h("put_partial")
            self.db.execute("UPDATE meta SET v=? WHERE k='round'", (rnd,))
            self._h("before_commit")
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def committed_round(self) -> int:
        return self.db.execute("SELECT v FROM meta WHERE k='round'").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class LmdbStore:
    def __init__(self, path: str, n: int, d: int, dtype: str, create: bool = False):
        if lmdb is None:
            raise RuntimeError("lmdb not installed (pip install lmdb)")
        self.n, self.d, self.dtype, self.hook = n, d, np.dtype(dtype), None
        row = d * self.dtype.itemsize
        map_size = int(n * row * 1.5) + (1 << 30)
        self.env = lmdb.open(path, map_size=map_size, subdir=True, sync=True, metasync=True,
                             readahead=True, max_dbs=2, meminit=False)
        self.states = self.env.open_db(b"states")
        self.meta = self.env.open_db(b"meta")
        if create:
            with self.env.begin(write=True) as txn:
                txn.put(b"round", struct.pack("<q", 0), db=self.meta)

    def _h(self, stage: str) -> None:
        if self.hook:
            self.hook(stage)

    @staticmethod
    def key(i: int) -> bytes:
        return int(i).to_bytes(4, "big")

    def fill(self, n: int, chunk_fn, chunk: int = 128) -> None:
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            rows = chunk_fn(i0, i1)
            with self.env.begin(write=True, db=self.states) as txn:
                for j in range(i1 - i0):
                    txn.put(self.key(i0 + j), rows[j].tobytes(), append=True)
        self.env.sync(True)

    def read(self, ids) -> list:
        out = []
        with self.env.begin(db=self.states, buffers=True) as txn:
            for i in ids:
                b = txn.get(self.key(i))
                out.append(np.zeros(self.d, self.dtype) if b is None else np.frombuffer(b, self.dtype).copy())
        return out

    def commit(self, rnd: int, updates: dict) -> None:
        with self.env.begin(write=True) as txn:  # commits on normal exit, aborts on exception
            for n_done, (i, v) in enumerate(updates.items()):
                txn.put(self.key(i), np.ascontiguousarray(v, self.dtype).tobytes(), db=self.states)
                if n_done + 1 == len(updates) // 2:
                    self._h("put_partial")
            txn.put(b"round", struct.pack("<q", rnd), db=self.meta)
            self._h("before_commit")

    def committed_round(self) -> int:
        with self.env.begin(db=self.meta) as txn:
            return struct.unpack("<q", txn.get(b"round"))[0]

    def close(self) -> None:
        self.env.close()


HOOKS = {"mmap": ["journal_partial", "journal_synced", "apply_partial", "applied"],
         "flatfile": ["journal_partial", "journal_synced", "apply_partial", "applied"],
         "mmap-nojournal": ["apply_partial"],
         "sqlite": ["put_partial", "before_commit"],
         "lmdb": ["put_partial", "before_commit"]}


def open_store(engine: str, path: str, n: int, d: int, dtype: str, create: bool = False, opts: dict | None = None):
    opts = opts or {}
    if engine == "mmap":
        return MmapStore(path, n, d, dtype, create)
    if engine == "flatfile":
        return MmapStore(path, n, d, dtype, create, read_mode="pread")
    if engine == "mmap-nojournal":
        return MmapStore(path, n, d, dtype, create, journal=False)
    if engine == "sqlite":
        return SqliteStore(path, n, d, dtype, create, page_size=opts.get("sqlite_page_size", 65536))
    if engine == "lmdb":
        return LmdbStore(path, n, d, dtype, create)
    raise ValueError(engine)


# ---------------------------------------------------------------- worker roles (child processes)

def role_fill(a: dict) -> dict:
    vals = Values(a["d"], a["dtype"], a["seed"])
    if os.path.exists(a["path"]):
        shutil.rmtree(a["path"])
    t0 = time.perf_counter()
    st = open_store(a["engine"], a["path"], a["n"], a["d"], a["dtype"], create=True, opts=a)
    st.fill(a["n"], vals.fill_chunk)
    st.close()
    fill_s = time.perf_counter() - t0
    alloc, apparent = disk_usage(a["path"])
    return {"fill_s": fill_s, "fill_peak_rss_mb": peak_rss_mb(), "disk_after_fill": alloc,
            "apparent_after_fill": apparent}


def role_rounds(a: dict) -> dict:
    n, d, k = a["n"], a["d"], a["per_round"]
    vals = Values(d, a["dtype"], a["seed"])
    if not a["warm"]:
        evict_cache(a["path"])
    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    st = open_store(a["engine"], a["path"], n, d, a["dtype"], opts=a)
    open_s = time.perf_counter() - t0
    digests: dict[int, bytes] = {}
    t_round, t_read, t_commit = [], [], []
    for r in range(1, a["rounds"] + 1):
        rng, ids = vals.round_plan(n, k, r)
        t0 = time.perf_counter()
        olds = st.read(ids)
        t1 = time.perf_counter()
        updates = {int(i): vals.modify(o, rng) for i, o in zip(ids, olds, strict=True)}
        t2 = time.perf_counter()
        st.commit(r, updates)
        t3 = time.perf_counter()
        t_round.append(t3 - t0)
        t_read.append(t1 - t0)
        t_commit.append(t3 - t2)
        for i, v in updates.items():
            digests[i] = hashlib.blake2b(v.tobytes(), digest_size=16).digest()
    peak_rounds = peak_rss_mb()
    rss_now = rss_breakdown_mb()
    st.close()
    alloc, apparent = disk_usage(a["path"])

    # verification (after RSS was recorded): rebuild "last value written" in memory from the
    # same seeded rounds, reopen the store, compare every modified client bit for bit
    ref: dict[int, np.ndarray] = {}
    for r in range(1, a["rounds"] + 1):
        rng, ids = vals.round_plan(n, k, r)
        for i in ids:
            old = ref[int(i)] if int(i) in ref else vals.fill_row(int(i))
            ref[int(i)] = vals.modify(old, rng)
    st = open_store(a["engine"], a["path"], n, d, a["dtype"], opts=a)
    ids = sorted(ref)
    got = st.read(ids)
    bad = sum(not np.array_equal(raw(g), raw(ref[i])) for i, g in zip(ids, got, strict=True))
    bad_digest = sum(hashlib.blake2b(g.tobytes(), digest_size=16).digest() != digests[i]
                     for i, g in zip(ids, got, strict=True))
    untouched = [i for i in np.random.default_rng([a["seed"], 3]).choice(n, min(n, 50), replace=False)
                 if int(i) not in ref]
    bad_untouched = sum(not np.array_equal(raw(g), raw(vals.fill_row(int(i))))
                        for i, g in zip(untouched, st.read(untouched), strict=True))
    round_ok = st.committed_round() == a["rounds"]
    st.close()
    return {"open_s": open_s, "t_round": t_round, "t_read": t_read, "t_commit": t_commit,
            "rounds_peak_rss_mb": peak_rounds, "rss_before_open_mb": rss_start, "rss_end_rounds": rss_now,
            "disk_after_rounds": alloc, "apparent_after_rounds": apparent,
            "verify_modified": len(ids), "verify_bad": bad, "verify_bad_digest": bad_digest,
            "verify_untouched": len(untouched), "verify_bad_untouched": bad_untouched,
            "verify_round_ok": round_ok}


def role_crash(a: dict) -> None:
    """Open the crash-test store, then run rounds forever (printing 'C r' after each commit).
    With a hook stage, stop inside round R0+1 at that stage, print 'H', and wait to be killed."""
    n, d, k = a["n"], a["d"], a["per_round"]
    vals = Values(d, a["dtype"], a["seed"])
    st = open_store(a["engine"], a["path"], n, d, a["dtype"], opts=a)
    r0 = st.committed_round()
    print(f"O {r0}", flush=True)
    target = a.get("hook")
    state = {"r": None}

    def hook(stage):
        if stage == target and state["r"] == r0 + 1:
            print("H", flush=True)
            while True:
                time.sleep(1)

    st.hook = hook
    for r in range(r0 + 1, r0 + 100000):
        state["r"] = r
        _, ids = vals.round_plan(n, k, r)
        st.read(ids)
        st.commit(r, {int(i): vals.crash_row(r, int(i)) for i in ids})
        print(f"C {r}", flush=True)


WORKERS = {"fill": role_fill, "rounds": role_rounds, "crash": role_crash}


def run_worker(role: str, args: dict, timeout: float = 3600) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--_worker", role, json.dumps(args)],
                       capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"worker {role} failed:\n{p.stderr[-3000:]}")
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker {role} gave no result:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


# ---------------------------------------------------------------- crash test (parent side)

def expected_state(vals: Values, n: int, k: int, upto: int) -> dict[int, int]:
    """client -> last crash-test round (<= upto) that wrote it (0 = fill)."""
    last = dict.fromkeys(range(n), 0)
    for r in range(1, upto + 1):
        for i in vals.round_plan(n, k, r)[1]:
            last[int(i)] = r
    return last


def check_store(engine, path, a, vals, allowed: set) -> tuple[bool, int, str]:
    st = open_store(engine, path, a["n"], a["d"], a["dtype"], opts=a)
    try:
        rnd = st.committed_round()
        ids = list(range(a["n"]))
        got = st.read(ids)
    finally:
        st.close()
    if rnd not in allowed:
        return False, rnd, f"committed round {rnd} not in {sorted(allowed)}"
    last = expected_state(vals, a["n"], a["per_round"], rnd)
    bad = [i for i in ids if not np.array_equal(raw(got[i]), raw(vals.crash_row(last[i], i)))]
    if bad:
        # describe: which of the in-flight round's clients hold old vs new
        nxt = max(allowed)
        _, inflight = vals.round_plan(a["n"], a["per_round"], nxt)
        prev = expected_state(vals, a["n"], a["per_round"], nxt - 1)
        desc = []
        for i in map(int, inflight):
            g = raw(got[i])
            if np.array_equal(g, raw(vals.crash_row(nxt, i))):
                desc.append("new")
            elif np.array_equal(g, raw(vals.crash_row(prev[i], i))):
                desc.append("old")
            else:
                desc.append("torn")
        return False, rnd, f"{len(bad)} clients differ from round {rnd}; in-flight round {nxt}: {desc}"
    return True, rnd, "ok"


def crash_test(engine: str, base: str, a: dict, random_kills: int, log) -> dict:
    path = os.path.join(base, f"crash_{engine}")
    vals = Values(a["d"], a["dtype"], a["seed"])
    if os.path.exists(path):
        shutil.rmtree(path)
    st = open_store(engine, path, a["n"], a["d"], a["dtype"], create=True, opts=a)
    st.fill(a["n"], lambda i0, i1: np.stack([vals.crash_row(0, i) for i in range(i0, i1)]))
    st.close()
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rnd_gen = random.Random(a["seed"])
    trials = [("hook", h) for h in HOOKS[engine]] + [("random", None)] * random_kills
    results = []
    for kind, hook in trials:
        args = dict(a, engine=engine, path=path, hook=hook)
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_worker", "crash", json.dumps(args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        r0 = int(p.stdout.readline().split()[1])
        acked = r0
        if kind == "hook":
            line = p.stdout.readline().strip()
            assert line == "H", (line, p.stderr.read() if p.poll() is not None else "")
        else:
            # let a couple of rounds commit to time them, then kill at a random moment
            t_prev = None
            dts = []
            for _ in range(3):
                acked = int(p.stdout.readline().split()[1])
                t = time.perf_counter()
                if t_prev is not None:
                    dts.append(t - t_prev)
                t_prev = t
            time.sleep(rnd_gen.uniform(0, 2 * max(dts)))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        rest = p.stdout.read().split("\n")
        for line in rest:
            if line.startswith("C "):
                acked = int(line.split()[1])
        p.stdout.close()
        p.stderr.close()
        ok, rnd, msg = check_store(engine, path, a, vals, {acked, acked + 1})
        where = hook if kind == "hook" else "random"
        outcome = "new" if rnd == acked + 1 else "old"
        results.append({"kill": where, "ok": ok, "acked": acked, "recovered_round": rnd, "state": outcome, "msg": msg})
        log(f"    crash {engine:15s} kill@{where:16s} acked round {acked:4d} -> reopened round {rnd:4d} "
            f"({outcome}) {'OK' if ok else 'FAIL: ' + msg}")
        if not ok:
            break  # store is inconsistent; further trials would test nothing
    shutil.rmtree(path)
    return {"trials": len(results), "passed": sum(r["ok"] for r in results), "detail": results}


# ---------------------------------------------------------------- main

def pct(x, q):
    return float(np.percentile(np.asarray(x), q))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        res = WORKERS[sys.argv[2]](json.loads(sys.argv[3]))
        if res is not None:
            print("RESULT " + json.dumps(res), flush=True)
        return

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Each engine runs in child processes so ru_maxrss is per engine and phase.")
    ap.add_argument("--clients", type=int, default=10000, help="population size N (default 10000)")
    ap.add_argument("--dim", type=int, default=61706, help="values per client state (LeNet-5: 61706)")
    ap.add_argument("--rounds", type=int, default=50, help="timed rounds (default 50)")
    ap.add_argument("--per-round", type=int, default=10, help="clients sampled per round (default 10)")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    ap.add_argument("--dir", default="/tmp/state_store", help="scratch directory for the stores")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma list of mmap,flatfile,sqlite,lmdb")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm", action="store_true",
                    help="keep the store in the page cache for the rounds (default: evict our files first)")
    ap.add_argument("--sqlite-page-size", type=int, default=65536)
    ap.add_argument("--min-free-gb", type=float, default=20.0,
                    help="skip an engine whose store would leave less than this free on --dir's disk")
    ap.add_argument("--crash-clients", type=int, default=200, help="population of the small crash-test store")
    ap.add_argument("--crash-random-kills", type=int, default=10, help="random-moment SIGKILLs per engine")
    ap.add_argument("--no-crash", action="store_true", help="skip the crash test")
    ap.add_argument("--crash-control", action="store_true",
                    help="also crash-test mmap without its journal (expected to FAIL: shows the test bites)")
    ap.add_argument("--keep", action="store_true", help="do not delete the stores at the end")
    ap.add_argument("--json", help="write all results to this JSON file")
    args = ap.parse_args()

    engines = [e for e in args.engines.split(",") if e]
    if "lmdb" in engines and lmdb is None:
        print("lmdb not importable: skipping it (pip install lmdb)")
        engines.remove("lmdb")
    os.makedirs(args.dir, exist_ok=True)
    itemsize = np.dtype(args.dtype).itemsize
    data_bytes = args.clients * args.dim * itemsize
    print(f"N={args.clients:,} d={args.dim:,} {args.dtype}: {args.dim * itemsize:,} B/client, "
          f"{data_bytes / GB:.2f} GB of state; {args.rounds} rounds x {args.per_round} clients; "
          f"{'warm' if args.warm else 'cold'} page cache; sqlite {sqlite3.sqlite_version}"
          f"{', lmdb ' + '.'.join(map(str, lmdb.version())) if lmdb else ''}")
    common = {"n": args.clients, "d": args.dim, "dtype": args.dtype, "seed": args.seed,
              "per_round": args.per_round, "rounds": args.rounds, "warm": args.warm,
              "sqlite_page_size": args.sqlite_page_size}
    results = []
    for engine in engines:
        path = os.path.join(args.dir, engine)
        free = shutil.disk_usage(args.dir).free
        need = data_bytes * (1.3 if engine == "sqlite" else 1.3 if engine == "lmdb" else 1.05)
        if free - need < args.min_free_gb * GB:
            print(f"[{engine}] SKIP: {free / GB:.1f} GB free, store needs up to ~{need / GB:.1f} GB, "
                  f"would leave < {args.min_free_gb} GB")
            results.append({"engine": engine, "skipped": True})
            continue
        print(f"[{engine}] filling {args.clients:,} clients ...", flush=True)
        row = {"engine": engine, "n": args.clients, "dtype": args.dtype}
        try:
            row.update(run_worker("fill", dict(common, engine=engine, path=path)))
            print(f"[{engine}] fill {row['fill_s']:.1f} s, disk {row['disk_after_fill'] / GB:.2f} GB, "
                  f"peak RSS {row['fill_peak_rss_mb']:.0f} MB; rounds ...", flush=True)
            row.update(run_worker("rounds", dict(common, engine=engine, path=path)))
        finally:
            if not args.keep and os.path.exists(path):
                shutil.rmtree(path)
        tr = row["t_round"]
        row.update(med=pct(tr, 50), p90=pct(tr, 90), max=max(tr), read_med=pct(row["t_read"], 50),
                   commit_med=pct(row["t_commit"], 50), commit_p90=pct(row["t_commit"], 90))
        row["verified"] = (row["verify_bad"] == 0 and row["verify_bad_digest"] == 0
                           and row["verify_bad_untouched"] == 0 and row["verify_round_ok"])
        print(f"[{engine}] s/round median {row['med'] * 1e3:.1f} ms p90 {row['p90'] * 1e3:.1f} ms "
              f"max {row['max'] * 1e3:.1f} ms (read median {row['read_med'] * 1e3:.1f} ms, commit median "
              f"{row['commit_med'] * 1e3:.1f} ms p90 {row['commit_p90'] * 1e3:.1f} ms); rounds peak RSS "
              f"{row['rounds_peak_rss_mb']:.0f} MB (end: {row['rss_end_rounds']}); disk after rounds "
              f"{row['disk_after_rounds'] / GB:.2f} GB; verify: {row['verify_modified']} modified clients, "
              f"{row['verify_bad']} bad, {row['verify_bad_untouched']}/{row['verify_untouched']} untouched bad, "
              f"round ok {row['verify_round_ok']}", flush=True)
        results.append(row)

    crash = {}
    if not args.no_crash:
        ca = dict(common, n=args.crash_clients)
        print(f"crash test: {args.crash_clients} clients, SIGKILL at fixed points and "
              f"{args.crash_random_kills} random moments per engine", flush=True)
        for engine in engines + (["mmap-nojournal"] if args.crash_control else []):
            crash[engine] = crash_test(engine, args.dir, ca, 0 if engine == "mmap-nojournal"
                                       else args.crash_random_kills, lambda s: print(s, flush=True))

    print("\n| engine | N | dtype | fill s | disk GB (fill / after rounds) | s/round median | s/round p90 "
          "| read ms median | commit ms median / p90 | fill peak RSS MB | rounds peak RSS MB (file-backed RSS at end) "
          "| bit-exact | crash test |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        if row.get("skipped"):
            print(f"| {row['engine']} | {args.clients:,} | {args.dtype} | skipped (disk) |||||||||")
            continue
        c = crash.get(row["engine"])
        ctxt = f"{c['passed']}/{c['trials']} pass" if c else "not run"
        print(f"| {row['engine']} | {row['n']:,} | {row['dtype']} | {row['fill_s']:.1f} | "
              f"{row['disk_after_fill'] / GB:.2f} / {row['disk_after_rounds'] / GB:.2f} | "
              f"{row['med']:.4f} | {row['p90']:.4f} | {row['read_med'] * 1e3:.1f} | "
              f"{row['commit_med'] * 1e3:.1f} / {row['commit_p90'] * 1e3:.1f} | {row['fill_peak_rss_mb']:.0f} | "
              f"{row['rounds_peak_rss_mb']:.0f} ({row['rss_end_rounds'].get('RssFile', 0):.0f}) | "
              f"{'yes' if row['verified'] else 'NO'} | {ctxt} |")
    if "mmap-nojournal" in crash:
        c = crash["mmap-nojournal"]
        print(f"control mmap without journal: {c['passed']}/{c['trials']} pass (expected to fail)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "crash": crash}, f, indent=1)
    if not args.keep:
        with contextlib.suppress(OSError):
            os.rmdir(args.dir)  # only if empty: per-engine stores were removed above


if __name__ == "__main__":
    main()
