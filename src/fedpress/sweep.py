"""`fedpress sweep`: every combination of a grid of config values, times every seed, run
into one resumable tree, then compared with the seeds of each combination grouped.

    fedpress sweep CONFIG --seeds 0,1,2 --grid KEY=V1,V2 [--grid KEY2=A,B ...] [--set KEY=VALUE ...]
                   --out DIR [--target-accuracy A] [--executor NAME] [--workers N] [--plot PATH]
                   [--dry-run] [--quiet]

    DIR/sweep.json                the sweep: config, --set overrides, grid, seeds, and every run's
                                  directory and overrides (merged when a later call adds seeds or values)
    DIR/<k1=v1,k2=a>/seed<s>/     a run directory (`fedpress run --out`), one per combination and seed
    DIR/<k1=v1,k2=a>/seed<s>.lock held by the process running that run
    DIR/compare.png               the grouped comparison figure

Grid values are read as `--set` values are (a TOML value, else a bare string) and split on
commas outside brackets and quotes (`--grid model.widths=[32],[64,64]`). A combination's
directory name is `key=value` pairs joined by "," in the grid's order, the value written
canonically (`1e-1` and `0.1` are one directory) with characters outside `A-Za-z0-9._+=,@%-`
replaced by "_"; a sweep without --grid runs into DIR/base/. Each run is named
`<config name>[<combination>]`.

Every run's config is loaded before the first run starts, so a bad key or value fails at
once with the ConfigError of `fedpress.config.load`. A run whose summary.json exists is
skipped; one with a checkpoint.pt resumes; one whose finished config asks only for more
`rounds` is extended (`--resume` semantics); any other starts (over) with overwrite. A
directory holding a run of another config stops the sweep before any run. Several sweep
processes can share a tree: each run is claimed with an exclusive lock (flock) on its
.lock file, which the system releases if the process dies, and a run another process
holds is skipped. `executor`, `workers` and `device` only say how a run executes: a run
resumes with the ones it started with, and compare groups runs across them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import socket
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpress.config import EXECUTORS, Config, dumps, load, parse_override
from fedpress.errors import ConfigError, RunDirectoryError

try:
    import fcntl
except ImportError:  # Windows: O_EXCL lock files, which a killed process leaves behind
    fcntl = None

__all__ = [
    "EXECUTION_KEYS",
    "NO_GRID",
    "SWEEP_FILE",
    "PlannedRun",
    "RunLock",
    "SweepResult",
    "add_arguments",
    "combination_name",
    "main",
    "parse_grid",
    "parse_seeds",
    "plan",
    "run_sweep",
    "split_values",
]

SWEEP_FILE = "sweep.json"
NO_GRID = "base"  # the combination directory of a sweep without --grid
EXECUTION_KEYS = ("executor", "workers", "device")  # how a run executes, not what it computes
_SAFE = re.compile(r"[^A-Za-z0-9._+=,@%-]")
_MAX_NAME = 120


# ---------------------------------------------------------------------------- parsing


def parse_seeds(text: str) -> list[int]:
    """`"0,1,2"` -> [0, 1, 2] (duplicates dropped, order kept); ConfigError otherwise."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            seed = int(part)
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
        if seed < 0:
            raise ConfigError(f"--seeds {text!r}: seeds must be >= 0")
        if seed not in seeds:
            seeds.append(seed)
    return seeds


def split_values(text: str) -> list[str]:
    """Split a --grid value list on the commas outside brackets, braces and quotes:
    `0.1,[32,64],"a,b"` -> ["0.1", "[32,64]", '"a,b"']."""
    parts, depth, quote, start, i = [], 0, None, 0, 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\" and quote == '"':
                i += 1  # an escaped character inside a basic string
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return [part.strip() for part in parts]


def parse_grid(items: Iterable[str]) -> dict[str, list[str]]:
    """`["train.lr=0.1,0.05", "algorithm.ratio=0.01"]` -> {"train.lr": ["0.1", "0.05"], ...}: each
    key's value texts, as --set would read them; values equal once read appear once. ConfigError
    for an item without "=", an empty value, a key given twice, or `seed` / `name` (--seeds; the
    sweep names its runs)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, rest = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {item!r}: expected dotted.key=value1,value2,...")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; give all its values in one --grid {key}=v1,v2")
        if key in ("seed", "name"):
            hint = "give seeds with --seeds" if key == "seed" else "the sweep names each run after its combination"
            raise ConfigError(f"--grid {key}: {hint}")
        texts = split_values(rest)
        if any(not t for t in texts):
            raise ConfigError(f"--grid {item!r}: an empty value")
        kept: dict[str, str] = {}
        for text in texts:
            kept.setdefault(_canonical(_parse(key, text)), text)
        grid[key] = list(kept.values())
    return grid


def _parse(key: str, text: str) -> Any:
    return parse_override(f"{key}={text}")[1]


def _canonical(value: Any) -> str:
    """A value as its directory name writes it, before unsafe characters are replaced."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return "_".join(_canonical(v) for v in value)
    if isinstance(value, dict):
        return "_".join(f"{k}-{_canonical(v)}" for k, v in value.items())
    return str(value)


def combination_name(values: Mapping[str, Any]) -> str:
    """The directory name of one combination of grid values ({key: value read as --set reads
    it}): `train.lr=0.1,algorithm.ratio=0.01`, stable (the same values give the same name) and
    filesystem-safe; NO_GRID when there is no grid."""
    if not values:
        return NO_GRID
    text = ",".join(f"{key}={_canonical(value)}" for key, value in values.items())
    name = _SAFE.sub("_", text)
    if len(name) > _MAX_NAME:
        name = name[: _MAX_NAME - 9] + "~" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return name


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep: a combination of grid values and a seed."""

    path: Path  # DIR/<combination>/seed<s>
    combination: str  # the directory name of the combination
    values: dict[str, Any]  # the combination's grid values, read
    seed: int
    overrides: list[str]  # everything given to fedpress.config.load: --set, the grid, seed, name
    config: Config

    @property
    def relative(self) -> str:
        return f"{self.combination}/seed{self.seed}"

    @property
    def lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")


def _toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string


def plan(config: str | Path, out: str | Path, *, seeds: Sequence[int] | None = None,
         grid: Mapping[str, Sequence[str]] | None = None, overrides: Sequence[str] = (),
         executor: str | None = None, workers: int | None = None) -> list[PlannedRun]:
    """Every run of the sweep, combination-major (the grid's keys and values in order), each
    run's config loaded: a bad key or value raises the ConfigError of fedpress.config.load
    before anything runs. `seeds` None: the config's own seed."""
    grid = {key: list(texts) for key, texts in (grid or {}).items()}
    for key in grid:
        if key in ("seed", "name"):
            raise ConfigError(f"--grid {key}: not a grid key (seeds: --seeds)")
    base = load(config, overrides)
    seeds = list(seeds) if seeds else [base.seed]
    extra = [f"executor={_toml_string(executor)}"] if executor is not None else []
    extra += [f"workers={workers}"] if workers is not None else []
    out = Path(out)
    runs: list[PlannedRun] = []
    names: dict[str, dict[str, Any]] = {}
    choices = [[(key, text, _parse(key, text)) for text in texts] for key, texts in grid.items()]
    for combo in itertools.product(*choices):
        values = {key: value for key, _, value in combo}
        name = combination_name(values)
        if names.setdefault(name, values) != values:
            raise ConfigError(f"--grid values {names[name]} and {values} share the directory name {name!r}; "
                              f"write one of them differently")
        settings = [f"{key}={text}" for key, text, _ in combo]
        if grid:
            settings.append(f"name={_toml_string(f'{base.name}[{name}]')}")
        for seed in seeds:
            run_overrides = [*overrides, *settings, f"seed={seed}", *extra]
            cfg = load(config, run_overrides)
            runs.append(PlannedRun(out / name / f"seed{seed}", name, values, seed, run_overrides, cfg))
    return runs


# ---------------------------------------------------------------------------- locks


class RunLock:
    """An exclusive, non-blocking lock on a file (`flock`): held while a process runs the run,
    released when the process ends however it ends, so a killed sweep never leaves a run
    locked. The file holds "pid host" for whoever looks; it is removed on release."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; False (without waiting, unless `blocking`) when another holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            if fcntl is None:
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
                except FileExistsError:
                    if not blocking:
                        return False
                    time.sleep(0.1)
                    continue
            else:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    os.close(fd)
                    return False
                try:  # the holder before us may have removed the file between our open and our flock
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self._fd = fd
            return True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: the next holder opens a new file
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------- the state of a run


def _flat(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ, execution keys aside."""
    a, b = _flat(before), _flat(now)
    return sorted(k for k in set(a) | set(b) if k not in EXECUTION_KEYS and a.get(k, None) != b.get(k, None))


def _describe(keys: list[str], before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    a, b = _flat(before), _flat(now)
    shown = [f"{k}: {a.get(k, '(unset)')!r} here, {b.get(k, '(unset)')!r} asked" for k in keys[:3]]
    return "; ".join(shown) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")


def _state(run: PlannedRun) -> tuple[str, Config]:
    """What to do with a run, and the config to do it with: "done" (summary.json, same config),
    "resume" (checkpoint.pt), "extend" (finished, the config asks only for more rounds), "start"
    (nothing to go on from). A resumed or extended run keeps the execution keys it started with.
    RunDirectoryError when the directory holds a run of another config."""
    path = run.path
    config_file = path / "config.toml"
    if not config_file.is_file():
        return "start", run.config
    try:
        stored = tomllib.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RunDirectoryError(f"{path}: config.toml cannot be read ({e}); remove the directory to rerun it") from None
    wanted = tomllib.loads(dumps(run.config))
    differ = _differences(stored, wanted)
    kept = dataclasses.replace(run.config, **{k: stored[k] for k in EXECUTION_KEYS if k in stored})
    hint = "run the sweep with the settings it started with, or give another --out"
    if (path / "checkpoint.pt").is_file():
        if differ:
            raise RunDirectoryError(f"{path} holds an unfinished run of another config "
                                    f"({_describe(differ, stored, wanted)}); {hint}")
        return "resume", kept
    if (path / "summary.json").is_file():
        if not differ:
            return "done", run.config
        if differ == ["rounds"] and wanted["rounds"] > stored.get("rounds", 0):
            summary = json.loads((path / "summary.json").read_text())
            if summary.get("diverged_at_round") is not None:
                return "done", run.config  # a diverged run has no model to go on from
            if not (path / "final.pt").is_file():
                raise RunDirectoryError(f"{path}: cannot extend the run to {wanted['rounds']} rounds: it has no "
                                        f"final.pt; remove the directory to rerun it")
            return "extend", kept
        raise RunDirectoryError(f"{path} holds a finished run of another config "
                                f"({_describe(differ, stored, wanted)}); {hint}")
    return "start", run.config  # config.toml alone: a run killed before its first checkpoint


def _engine(cfg: Config) -> Callable[..., dict]:
    """The driver `fedpress run` uses: the virtual clock for asynchronous configs, rounds otherwise
    (looked up when called, so that a test can replace either)."""
    from fedpress import sim
    from fedpress.sim import asynchronous

    return asynchronous.run if cfg.is_async else sim.run


# ---------------------------------------------------------------------------- sweep.json


def _record(runs: Sequence[PlannedRun], config: str | Path, overrides: Sequence[str],
            grid: Mapping[str, Sequence[str]], seeds: Sequence[int]) -> dict[str, Any]:
    return {
        "config": str(config),
        "overrides": list(overrides),
        "grid": {key: list(texts) for key, texts in grid.items()},
        "seeds": list(seeds),
        "runs": [
            {"dir": run.relative, "combination": run.values, "seed": run.seed, "overrides": run.overrides}
            for run in runs
        ],
    }


def _read_record(out: Path) -> dict[str, Any] | None:
    path = out / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirectoryError(f"{path}: not a fedpress sweep record ({e}); give another --out") from None
    missing = [k for k in ("overrides", "grid", "seeds", "runs") if not isinstance(record, dict) or k not in record]
    if missing:
        raise RunDirectoryError(f"{path}: not a fedpress sweep record (no {', '.join(missing)}); give another --out")
    return record


def _identity(overrides: Iterable[str]) -> list[str]:
    """The --set overrides that make a sweep what it is: all but `rounds` (more extends the runs)
    and the execution keys."""
    return [text for text in overrides if text.partition("=")[0].strip() not in ("rounds", *EXECUTION_KEYS)]


def _check_record(record: Mapping[str, Any], out: Path, overrides: Sequence[str], grid: Mapping[str, Any]) -> None:
    """A tree holds one sweep: the same --set overrides (but for `rounds` and the execution keys) and
    grid keys; more values and seeds are welcome."""
    if _identity(record["overrides"]) != _identity(overrides):
        raise RunDirectoryError(f"{out} holds a sweep with --set {record['overrides']}, not {list(overrides)}; give "
                                f"the same --set (more --grid values, --seeds or rounds are fine), or another --out")
    if set(record["grid"]) != set(grid):
        raise RunDirectoryError(f"{out} holds a sweep over --grid keys {list(record['grid'])}, not {list(grid)}; "
                                f"give the same keys (more values and seeds are fine), or another --out")


def _merge(old: Mapping[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The union of two records of one sweep: old values and seeds first, runs by combination then seed."""
    if old is None:
        return new
    grid = {key: list(texts) for key, texts in old["grid"].items()}
    for key, texts in new["grid"].items():
        known = {_canonical(_parse(key, t)) for t in grid.get(key, [])}
        grid.setdefault(key, []).extend(t for t in texts if _canonical(_parse(key, t)) not in known)
    seeds = list(dict.fromkeys([*old["seeds"], *new["seeds"]]))
    runs = {entry["dir"]: entry for entry in old["runs"]}
    runs.update({entry["dir"]: entry for entry in new["runs"]})
    order = list(dict.fromkeys(d.rsplit("/", 1)[0] for d in runs))
    ordered = sorted(runs.values(), key=lambda e: (order.index(e["dir"].rsplit("/", 1)[0]),
                                                   seeds.index(e["seed"]) if e["seed"] in seeds else len(seeds)))
    return {**new, "grid": grid, "seeds": seeds, "runs": ordered}


def _write_record(out: Path, record: dict[str, Any], overrides: Sequence[str], grid: Mapping[str, Any]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out / (SWEEP_FILE + ".lock")):
        old = _read_record(out)
        if old is not None:
            _check_record(old, out, overrides, grid)
        merged = _merge(old, record)
        tmp = out / (SWEEP_FILE + ".tmp")
        tmp.write_text(json.dumps(merged, indent=2, default=str) + "\n")
        os.replace(tmp, out / SWEEP_FILE)
    return merged


# ---------------------------------------------------------------------------- running


@dataclass
class SweepResult:
    """What one call did. `dirs`: every run of the sweep's tree (this call's and earlier
    calls'), combination-major; `finished`: those with a summary.json now."""

    out: Path
    runs: list[PlannedRun]  # this call's plan
    dirs: list[Path]
    ran: dict[str, list[Path]] = field(default_factory=lambda: {"start": [], "resume": [], "extend": []})
    skipped: list[Path] = field(default_factory=list)  # finished before
    busy: list[Path] = field(default_factory=list)  # held by another process

    @property
    def finished(self) -> list[Path]:
        return [d for d in self.dirs if (d / "summary.json").is_file()]


def _percent(value: Any) -> str:
    return "—" if not isinstance(value, int | float) or not math.isfinite(value) else f"{100 * value:.2f}%"


def _done_line(summary: Mapping[str, Any], seconds: float) -> str:
    up = (summary.get("uplink_bytes") or 0) / 1e6
    down = (summary.get("downlink_bytes") or 0) / 1e6
    objective = summary.get("final_train_objective")
    objective = f", objective {objective:.6g}" if isinstance(objective, int | float) else ""
    return (f"final accuracy {_percent(summary.get('final_accuracy'))}{objective}, "
            f"up {up:,.2f} MB, down {down:,.2f} MB ({seconds:.1f} s)")


def run_sweep(config: str | Path, out: str | Path, *, seeds: Sequence[int] | None = None,
              grid: Mapping[str, Sequence[str]] | None = None, overrides: Sequence[str] = (),
              executor: str | None = None, workers: int | None = None, progress: bool = False,
              dry_run: bool = False, log: Callable[[str], None] | None = None) -> SweepResult:
    """Run (or go on with) a sweep into `out`; see the module's docstring. `grid`: {key: [value
    texts]} (parse_grid). Everything is checked before the first run: each run's config
    (ConfigError), the tree's sweep.json (the same --set and grid keys) and each run
    directory's config (RunDirectoryError). `dry_run`: check and report, run nothing.
    Exceptions from a run propagate (its lock released); the runs finished before are kept."""
    log = log or (lambda line: print(line, flush=True))
    out = Path(out)
    grid = {key: list(texts) for key, texts in (grid or {}).items()}
    overrides = list(overrides)
    runs = plan(config, out, seeds=seeds, grid=grid, overrides=overrides, executor=executor, workers=workers)
    old = _read_record(out)
    if old is not None:
        _check_record(old, out, overrides, grid)
        if list(old["grid"]) != list(grid):  # the tree's key order: the same directory names
            grid = {key: grid[key] for key in old["grid"]}
            runs = plan(config, out, seeds=seeds, grid=grid, overrides=overrides, executor=executor, workers=workers)
    states = {run.path: _state(run)[0] for run in runs}  # raises before any run on a foreign directory
    counts = {s: sum(1 for v in states.values() if v == s) for s in ("done", "resume", "extend", "start")}
    combos = len(dict.fromkeys(run.combination for run in runs))
    seed_list = list(dict.fromkeys(run.seed for run in runs))
    log(f"sweep: {combos} combination{'s' * (combos != 1)} x {len(seed_list)} seed{'s' * (len(seed_list) != 1)} "
        f"= {len(runs)} runs in {out}: {counts['done']} finished, {counts['resume']} to resume, "
        + (f"{counts['extend']} to extend, " if counts["extend"] else "") + f"{counts['start']} to start")
    if dry_run:
        for run in runs:
            log(f"  {run.relative}: {states[run.path]}")
        return SweepResult(out, runs, [run.path for run in runs])
    record = _write_record(out, _record(runs, config, overrides, grid, seed_list), overrides, grid)
    result = SweepResult(out, runs, [out / entry["dir"] for entry in record["runs"]])

    order = sorted(runs, key=lambda r: (seed_list.index(r.seed), runs.index(r)))  # every combination of a seed first
    for i, run in enumerate(order, start=1):
        head = f"[{i}/{len(order)}] {run.relative}"
        if states[run.path] == "done":
            result.skipped.append(run.path)
            log(f"{head}: finished, skipped")
            continue
        lock = RunLock(run.lock)
        if not lock.acquire():
            result.busy.append(run.path)
            log(f"{head}: running in another process, skipped")
            continue
        try:
            state, cfg = _state(run)  # again, under the lock: another process may have finished it
            if state == "done":
                result.skipped.append(run.path)
                log(f"{head}: finished (by another process), skipped")
                continue
            started = time.perf_counter()
            summary = _engine(cfg)(cfg, run.path, resume=state in ("resume", "extend"), overwrite=state == "start",
                                   progress=progress)
        finally:
            lock.release()
        result.ran[state].append(run.path)
        verb = {"start": "ran", "resume": "resumed", "extend": "extended"}[state]
        log(f"{head}: {verb}: {_done_line(summary, time.perf_counter() - started)}")
    return result


# ---------------------------------------------------------------------------- the command


def _seeds_arg(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _workers_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--workers {text!r}: expected an integer >= 0 (0: the cores)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `fedpress sweep`, added to `parser` (a subcommand's parser)."""
    from fedpress.report import target_fraction

    parser.add_argument("config", help="the base config (TOML)")
    parser.add_argument("--seeds", type=_seeds_arg, metavar="S1,S2,...",
                        help="the seeds every combination runs with, e.g. 0,1,2 (default: the config's seed)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a config key and the values to sweep it over (read as --set reads a value); "
                             "repeat for more keys: every combination runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the sweep's tree: DIR/<combination>/seed<s>/ and DIR/sweep.json")
    parser.add_argument("--target-accuracy", type=target_fraction, metavar="A",
                        help="also report MB and rounds to reach it (a fraction, 0-1)")
    parser.add_argument("--executor", choices=EXECUTORS,
                        help="how each run trains its clients (the config's `executor`)")
    parser.add_argument("--workers", type=_workers_arg, metavar="N",
                        help="threads or processes of the threads/processes executors (the config's `workers`)")
    parser.add_argument("--plot", metavar="PATH", help="the comparison figure (default DIR/compare.png)")
    parser.add_argument("--dry-run", action="store_true", help="check everything and list the runs; run none")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress of each run")


def main(args: argparse.Namespace) -> int:
    """`fedpress sweep`: run the sweep, then print the comparison of its finished runs (seeds
    grouped) and write the figure. ConfigError and RunDirectoryError propagate for the
    command's one-line messages."""
    from fedpress.report import compare, plot_compare

    result = run_sweep(args.config, args.out, seeds=args.seeds, grid=parse_grid(args.grid), overrides=args.set,
                       executor=args.executor, workers=args.workers, progress=not args.quiet, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    finished = result.finished
    waiting = [d for d in result.dirs if d not in finished]
    if not finished:
        print(f"no run of {result.out} has finished yet ({len(waiting)} running elsewhere)")
        return 0
    print()
    print(compare(finished, args.target_accuracy))
    plot = Path(args.plot) if args.plot else result.out / "compare.png"
    plot_compare(finished, plot)
    print(f"plot: {plot}")
    if waiting:
        shown = ", ".join(str(d.relative_to(result.out)) for d in waiting[:5])
        print(f"not finished yet ({len(waiting)}, running in another process): {shown}"
              + (", ..." if len(waiting) > 5 else ""))
    return 0
