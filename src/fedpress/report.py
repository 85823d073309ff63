"""Reading, plotting and comparing finished (or running) fedpress runs.

A run directory holds ``metrics.csv`` (one row per round) and ``summary.json``.
This module reads them back, draws accuracy curves against rounds and against
bytes sent, and builds comparison tables in plain text and GitHub markdown.

Conventions:

* accuracies are fractions in [0, 1] in data (``read_metrics``, ``compare_rows``)
  and percentages only in rendered tables and plot axes;
* "MB" is 10**6 bytes;
* bytes come in three views, shown side by side in tables and plots so that a
  large uplink saving is not hidden by a dense downlink: uplink, downlink counted
  once per receiving client (``cum_downlink_bytes``, first downloads included;
  not the multicast view) and total (``which="total"``: uplink + downlink).

Runs that differ only by seed (their ``config.toml`` equal once ``seed``, ``name``
and the keys that only say how a run executes are dropped: :data:`GROUP_IGNORED_KEYS`)
form a group: :func:`group_rows` gives each group's mean ± sample std over its seeds,
:func:`compare` prints the grouped table whenever a group has more than one seed, and
the plots draw one mean line per group with a ± std band.

Runs that record a training objective (``train_objective``: QAFeL's logistic
regression with ``async.eval_train``) have it plotted, log scale, against rounds (server
steps) and MB, or their suboptimality f − f* when ``f_star`` is given (or the summary
has ``f_star``); a run without test accuracy shows "—" in the accuracy columns.

A path that is not a run directory raises :class:`NotARunError` (a
``RunDirectoryError``, so ``fedpress compare`` prints one line, and a
``FileNotFoundError``); a run file that cannot be read raises :class:`RunFileError`.

Plots use matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``),
so nothing here touches pyplot or the process-wide backend.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from fedpress.errors import RunDirectoryError

__all__ = [
    "FLOAT_COLUMNS",
    "GROUP_IGNORED_KEYS",
    "GROUP_STATS",
    "INT_COLUMNS",
    "METRICS_COLUMNS",
    "METRICS_FILE",
    "OPTIONAL_COLUMNS",
    "SUMMARY_FILE",
    "SWEEP_FILE",
    "MB",
    "NotARunError",
    "RunFileError",
    "SeedStat",
    "accuracy_curves",
    "bytes_to_target",
    "compare",
    "compare_figure",
    "compare_rows",
    "expand_runs",
    "group_key",
    "group_markdown_table",
    "group_note",
    "group_rows",
    "group_text_table",
    "markdown_table",
    "objective_curves",
    "plot_compare",
    "plot_run",
    "read_metrics",
    "read_summary",
    "rounds_to_target",
    "run_figures",
    "table_note",
    "target_fraction",
    "text_table",
]

PathLike = str | os.PathLike

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"
SWEEP_FILE = "sweep.json"  # written by `fedpress sweep` (fedpress.sweep) at the root of its tree
MB = 1_000_000  # bytes

FLOAT_COLUMNS = ("wall_seconds", "test_accuracy", "test_loss", "train_loss")
INT_COLUMNS = (
    "round",
    "clients",
    "rejected",
    "uplink_bytes",
    "downlink_bytes",
    "downlink_broadcast_bytes",
    "dense_uplink_bytes",
    "dense_downlink_bytes",
    "cum_uplink_bytes",
    "cum_downlink_bytes",
    "cum_downlink_broadcast_bytes",
    "cum_dense_uplink_bytes",
    "cum_dense_downlink_bytes",
)
# The documented column order of metrics.csv; read_metrics returns the columns in this order.
METRICS_COLUMNS = (
    "round",
    "wall_seconds",
    "test_accuracy",
    "test_loss",
    "train_loss",
    *INT_COLUMNS[1:],
)
# Float columns read when metrics.csv has them (the asynchronous engine with `async.eval_train`), after the above.
OPTIONAL_COLUMNS = ("train_objective", "train_accuracy")
REQUIRED_SUMMARY_KEYS = ("name", "algorithm")
# Config keys that do not make two runs different experiments: the seed, the name, and how a run
# executes (results equal bit for bit, or within vmap's stated float tolerance, or on another device).
GROUP_IGNORED_KEYS = ("seed", "name", "executor", "workers", "device", "checkpoint_every")

_DASH = "—"
_WHICH = {
    "total": ("cum_uplink_bytes", "cum_downlink_bytes"),
    "uplink": ("cum_uplink_bytes",),
    "downlink": ("cum_downlink_bytes",),
}


class NotARunError(RunDirectoryError, FileNotFoundError):
    """A path given as a run directory that does not exist or lacks a file every finished run
    has; the message names the path and what is missing ("runs/x: no metrics.csv (not a
    fedpress run directory)"). A RunDirectoryError, so ``fedpress`` prints it as one line, and
    a FileNotFoundError, as these reads raised before."""


class RunFileError(RunDirectoryError):
    """A run's metrics.csv or summary.json that cannot be read: the message names the file
    (and the line and column where it applies)."""


# ----------------------------------------------------------------------------- reading


def _why_missing(run_dir: Path, filename: str) -> str:
    if (run_dir / SWEEP_FILE).is_file():
        return "a sweep directory: give its runs, DIR/*/seed*"
    if (run_dir / CONFIG_FILE).is_file():
        return "a run that has not finished" if filename == SUMMARY_FILE else "a run that has written no row yet"
    return "not a fedpress run directory"


def _run_file(run_dir: PathLike, filename: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise NotARunError(f"{run_dir}: no such directory (not a fedpress run directory)")
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir}: not a directory (not a fedpress run directory)")
    path = run_dir / filename
    if not path.is_file():
        raise NotARunError(f"{run_dir}: no {filename} ({_why_missing(run_dir, filename)})")
    return path


def _parse_number(text: str, *, integer: bool) -> int | float:
    """Parse one cell; raises ValueError on anything that is not a number."""
    if integer:
        try:
            return int(text)
        except ValueError:
            pass
        value = float(text)  # tolerate "12.0"; non-integral values keep the column float
        return int(value) if value.is_integer() else value
    return float(text)


def read_metrics(run_dir: PathLike) -> dict[str, np.ndarray]:
    """Read ``run_dir/metrics.csv`` into ``{column: array}``, one entry per round.

    Columns are looked up by header name, so their order in the file does not
    matter. The :data:`METRICS_COLUMNS` come first, then those of
    :data:`OPTIONAL_COLUMNS` the file has (``train_objective``, ``train_accuracy``:
    float64); columns this module does not know (later additions such as
    ``virtual_time``) are ignored. Empty cells become NaN. Float columns are
    float64; integer columns are int64 when every cell is present and integral,
    float64 (NaN for empties) otherwise.

    Raises :class:`NotARunError` (a FileNotFoundError) when the directory or file
    is missing and :class:`RunFileError` (a ValueError naming the file, and the
    line and column where it applies) for an empty file, missing or duplicate
    columns, short rows or unparseable cells.
    """
    path = _run_file(run_dir, METRICS_FILE)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise RunFileError(f"{path}: empty file, expected a header row with columns {', '.join(METRICS_COLUMNS)}")
        header = [name.strip() for name in header]
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise RunFileError(f"{path}: duplicate column(s) {', '.join(map(repr, duplicates))}")
        missing = [name for name in METRICS_COLUMNS if name not in header]
        if missing:
            raise RunFileError(
                f"{path}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, header))}"
            )
        names = [*METRICS_COLUMNS, *(name for name in OPTIONAL_COLUMNS if name in header)]
        index = {name: header.index(name) for name in names}
        cells: dict[str, list[int | float]] = {name: [] for name in names}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            line = reader.line_num
            if len(row) < len(header):
                raise RunFileError(f"{path}, line {line}: expected {len(header)} fields, got {len(row)}")
            for name, i in index.items():
                text = row[i].strip()
                if not text:
                    cells[name].append(math.nan)
                    continue
                try:
                    cells[name].append(_parse_number(text, integer=name in INT_COLUMNS))
                except ValueError:
                    raise RunFileError(
                        f"{path}, line {line}, column {name!r}: cannot parse {text!r} as a number"
                    ) from None

    out: dict[str, np.ndarray] = {}
    for name in names:
        values = cells[name]
        if name in INT_COLUMNS and all(isinstance(v, int) for v in values):
            out[name] = np.array(values, dtype=np.int64)
        else:
            out[name] = np.array(values, dtype=np.float64)
    return out


def read_summary(run_dir: PathLike) -> dict[str, Any]:
    """Read ``run_dir/summary.json``; it must be a JSON object with at least ``name`` and
    ``algorithm``. Other values may be null (a run without a test split has no accuracy)."""
    path = _run_file(run_dir, SUMMARY_FILE)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(summary, dict):
        raise RunFileError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    missing = [key for key in REQUIRED_SUMMARY_KEYS if key not in summary]
    if missing:
        raise RunFileError(f"{path}: missing key(s) {', '.join(map(repr, missing))}")
    return summary


def _read_config(run_dir: PathLike) -> dict[str, Any] | None:
    """The run's resolved config (config.toml) as nested dicts; None when it has none or it is not TOML."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _summary_or_none(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_summary(run_dir)
    except (NotARunError, RunFileError):
        return None


def _is_async(run_dir: Path) -> bool:
    """Whether the run is asynchronous (its rows are server steps): its config has an [async] table."""
    config = _read_config(run_dir)
    if config is not None:
        return isinstance(config.get("async"), dict)
    summary = _summary_or_none(run_dir)
    return bool(summary and summary.get("asynchronous"))


def expand_runs(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """The run directories among ``paths``, a sweep's root (a directory with sweep.json and
    no metrics.csv, written by ``fedpress sweep``) replaced by its finished runs (those with
    a summary.json), in the sweep's order. Other paths pass through unchanged."""
    out: list[Path] = []
    for path in _as_dirs(paths):
        sweep = path / SWEEP_FILE
        if not sweep.is_file() or (path / METRICS_FILE).exists():
            out.append(path)
            continue
        try:
            record = json.loads(sweep.read_text(encoding="utf-8"))
            entries = [path / str(entry["dir"]) for entry in record["runs"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RunFileError(f"{sweep}: not a fedpress sweep record ({e})") from None
        finished = [d for d in entries if (d / SUMMARY_FILE).is_file()]
        if not finished:
            raise NotARunError(f"{path}: a sweep with no finished run yet ({len(entries)} planned)")
        out += finished
    return out


# ----------------------------------------------------------------------------- targets


def _check_target(target: float) -> float:
    target = float(target)
    if not math.isfinite(target) or not 0.0 <= target <= 1.0:
        hint = f"; did you mean {target / 100:g}?" if 1.0 < target <= 100.0 else ""
        raise ValueError(f"target accuracy must be a fraction in [0, 1], got {target:g}{hint}")
    return target


def target_fraction(text: str) -> float:
    """An argparse ``type`` for ``--target-accuracy``: a fraction in [0, 1], else a usage
    error that says so (and suggests 0.97 for 97)."""
    try:
        return _check_target(float(text))
    except ValueError as e:
        message = str(e) if "fraction" in str(e) else f"target accuracy must be a fraction in [0, 1], got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _first_reached(metrics: Mapping[str, np.ndarray], target: float) -> int | None:
    """Row index of the first evaluated round whose test accuracy is >= target, or None."""
    target = _check_target(target)
    accuracy = np.asarray(metrics["test_accuracy"], dtype=np.float64)
    hits = np.flatnonzero(~np.isnan(accuracy) & (accuracy >= target))
    return int(hits[0]) if hits.size else None


def bytes_to_target(metrics: Mapping[str, np.ndarray], target: float, which: str = "total") -> float | None:
    """Cumulative bytes sent by the first evaluated round whose test accuracy is >= ``target``.

    ``which`` is ``"total"`` (uplink + downlink per receiving client),
    ``"uplink"`` or ``"downlink"``. Rounds without an evaluation (NaN accuracy)
    never count. Returns None when the target is never reached (or that round's
    byte count is missing).
    """
    if which not in _WHICH:
        raise ValueError(f"which must be one of {', '.join(map(repr, _WHICH))}, got {which!r}")
    i = _first_reached(metrics, target)
    if i is None:
        return None
    values = [_number(metrics[column][i]) for column in _WHICH[which]]
    return None if None in values else float(sum(values))


def rounds_to_target(metrics: Mapping[str, np.ndarray], target: float) -> int | None:
    """The ``round`` number of the first evaluated round whose test accuracy is >= ``target``, or None."""
    i = _first_reached(metrics, target)
    return None if i is None else int(metrics["round"][i])


# ----------------------------------------------------------------------------- comparison


def _as_dirs(run_dirs: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(run_dirs, str | os.PathLike):
        return [Path(run_dirs)]
    return [Path(d) for d in run_dirs]


def _number(value: Any) -> float | None:
    """A finite-or-infinite float, or None for missing / null / NaN / non-numeric values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _evaluated(metrics: Mapping[str, np.ndarray]) -> np.ndarray:
    accuracy = np.asarray(metrics["test_accuracy"], dtype=np.float64)
    return accuracy[~np.isnan(accuracy)]


def _objectives(metrics: Mapping[str, np.ndarray]) -> np.ndarray:
    """The finite training objectives of the run's rows (none without a train_objective column)."""
    if "train_objective" not in metrics:
        return np.empty(0)
    values = np.asarray(metrics["train_objective"], dtype=np.float64)
    return values[np.isfinite(values)]


def _last(metrics: Mapping[str, np.ndarray], column: str) -> float | None:
    values = metrics[column]
    return _number(values[-1]) if len(values) else None


def _mb(value: float | None) -> float | None:
    return None if value is None else value / MB


def _plus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _reduction(dense: float | None, real: float | None) -> float | None:
    """dense / real bytes: how many times fewer bytes than dense fp32; None when unknown or nothing was sent."""
    return dense / real if dense is not None and real else None


def _disambiguate(labels: Sequence[str], dirs: Sequence[Path]) -> list[str]:
    """``labels`` made unique: a label shared by several runs gets `` [DIR]`` appended, DIR being the
    shortest trailing part of each run's path that tells those runs apart (the whole path if none does)."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    out = list(labels)
    for label, members in groups.items():
        if len(members) < 2:
            continue
        parts = [Path(dirs[i]).absolute().parts for i in members]
        suffixes = [str(Path(dirs[i])) for i in members]
        for depth in range(1, max(len(p) for p in parts) + 1):
            candidate = [str(Path(*p[-depth:])) for p in parts]
            if len(set(candidate)) == len(candidate):
                suffixes = candidate
                break
        for i, suffix in zip(members, suffixes, strict=True):
            out[i] = f"{label} [{suffix}]"
    return out


def compare_rows(run_dirs: PathLike | Iterable[PathLike], target_accuracy: float | None = None) -> list[dict[str, Any]]:
    """One dict per run, the data behind :func:`compare` and :func:`markdown_table`.

    Bytes are in MB (10**6 bytes) and come in three views: ``uplink``, ``downlink``
    (counted once per receiving client, first downloads included) and ``total``
    (uplink + downlink). Keys:

    * ``run_dir``, ``name``, ``label`` (``name``, with `` [DIR]`` appended when
      several runs share it), ``algorithm``, ``rounds``, ``seed`` (from the run's
      config.toml; None without one);
    * ``final_accuracy``, ``best_accuracy`` (fractions; None for a run without a
      test split); ``final_objective`` (the last training objective, None when the
      run records none);
    * ``uplink_mb``, ``downlink_mb``, ``total_mb``; ``downlink_broadcast_mb``
      (multicast counted once); ``initial_downlink_mb`` (the part of
      ``downlink_mb`` that is first downloads; None when the run does not record it);
    * ``dense_uplink_mb``, ``dense_downlink_mb``, ``dense_total_mb``: the same
      messages as dense fp32;
    * ``uplink_compression``, ``downlink_compression``, ``total_compression``:
      dense / actual bytes in each view;
    * ``target_accuracy``, ``uplink_mb_to_target``, ``downlink_mb_to_target``,
      ``total_mb_to_target`` (cumulative MB at the first evaluated round whose
      accuracy is >= the target), ``mb_to_target`` (the same as
      ``total_mb_to_target``, its older name), ``rounds_to_target``.

    Missing values are None: the target fields when no target is given or it is
    never reached, a reduction factor when the dense bytes are unknown or no byte
    was sent. Summary values are used where present; metrics.csv fills in any
    that are null or absent. A sweep's root directory stands for its finished
    runs (:func:`expand_runs`).
    """
    dirs = expand_runs(run_dirs)
    if not dirs:
        raise ValueError("compare_rows: no run directories given")
    if target_accuracy is not None:
        target_accuracy = _check_target(target_accuracy)

    rows = []
    for run_dir in dirs:
        metrics = read_metrics(run_dir)  # first: a directory without it is no run at all
        summary = read_summary(run_dir)
        evaluated = _evaluated(metrics)
        objectives = _objectives(metrics)
        config = _read_config(run_dir) or {}

        def pick(key: str, fallback: float | None, summary: dict[str, Any] = summary) -> float | None:
            value = _number(summary.get(key))
            return fallback if value is None else value

        uplink = pick("uplink_bytes", _last(metrics, "cum_uplink_bytes"))
        downlink = pick("downlink_bytes", _last(metrics, "cum_downlink_bytes"))
        total = _plus(uplink, downlink)
        broadcast = pick("downlink_broadcast_bytes", _last(metrics, "cum_downlink_broadcast_bytes"))
        initial = _number(summary.get("initial_downlink_bytes"))
        dense_uplink = pick("dense_uplink_bytes", _last(metrics, "cum_dense_uplink_bytes"))
        dense_downlink = pick("dense_downlink_bytes", _last(metrics, "cum_dense_downlink_bytes"))
        dense_total = _plus(dense_uplink, dense_downlink)
        rounds = pick("rounds", _last(metrics, "round"))
        seed = config.get("seed")

        row: dict[str, Any] = {
            "run_dir": str(run_dir),
            "name": str(summary["name"]),
            "label": str(summary["name"]),
            "algorithm": str(summary["algorithm"]),
            "rounds": None if rounds is None else int(rounds),
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            "final_accuracy": pick("final_accuracy", float(evaluated[-1]) if evaluated.size else None),
            "best_accuracy": pick("best_accuracy", float(evaluated.max()) if evaluated.size else None),
            "final_objective": pick("final_train_objective", float(objectives[-1]) if objectives.size else None),
            "uplink_mb": _mb(uplink),
            "downlink_mb": _mb(downlink),
            "total_mb": _mb(total),
            "downlink_broadcast_mb": _mb(broadcast),
            "initial_downlink_mb": _mb(initial),
            "dense_uplink_mb": _mb(dense_uplink),
            "dense_downlink_mb": _mb(dense_downlink),
            "dense_total_mb": _mb(dense_total),
            "uplink_compression": pick("uplink_compression", _reduction(dense_uplink, uplink)),
            "downlink_compression": _reduction(dense_downlink, downlink),
            "total_compression": pick("total_compression", _reduction(dense_total, total)),
            "target_accuracy": target_accuracy,
            "uplink_mb_to_target": None,
            "downlink_mb_to_target": None,
            "total_mb_to_target": None,
            "mb_to_target": None,
            "rounds_to_target": None,
        }
        if target_accuracy is not None:
            for which in _WHICH:
                row[f"{which}_mb_to_target"] = _mb(bytes_to_target(metrics, target_accuracy, which))
            row["mb_to_target"] = row["total_mb_to_target"]
            row["rounds_to_target"] = rounds_to_target(metrics, target_accuracy)
        rows.append(row)
    for row, label in zip(rows, _disambiguate([r["name"] for r in rows], dirs), strict=True):
        row["label"] = label
    return rows


# ----------------------------------------------------------------------------- groups of seeds


@dataclass(frozen=True)
class SeedStat:
    """One quantity over a group's runs: ``values`` holds one entry per run (seed), None
    where that run has none (never reached the target, has no test accuracy)."""

    values: tuple[float | None, ...]

    @property
    def known(self) -> tuple[float, ...]:
        """The values that are present."""
        return tuple(v for v in self.values if v is not None)

    @property
    def count(self) -> int:
        """How many runs have a value (k of "k of n")."""
        return len(self.known)

    @property
    def runs(self) -> int:
        """How many runs the group has (n of "k of n")."""
        return len(self.values)

    @property
    def mean(self) -> float | None:
        """The mean over the runs that have a value; None when none has."""
        return float(np.mean(self.known)) if self.known else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation (ddof = 1) over the runs that have a value; None below two."""
        return float(np.std(self.known, ddof=1)) if len(self.known) > 1 else None


# The compare_rows keys group_rows averages over seeds.
GROUP_STATS = (
    "final_accuracy",
    "best_accuracy",
    "final_objective",
    "rounds",
    "uplink_mb",
    "downlink_mb",
    "total_mb",
    "downlink_broadcast_mb",
    "initial_downlink_mb",
    "uplink_mb_to_target",
    "downlink_mb_to_target",
    "total_mb_to_target",
    "rounds_to_target",
)


def group_key(run_dir: PathLike) -> str | None:
    """What runs of one group share: the run's config.toml without :data:`GROUP_IGNORED_KEYS`
    (the seed, the name, how it executes), as canonical JSON. None when the run has no
    readable config.toml: such a run is a group of its own."""
    config = _read_config(run_dir)
    if config is None:
        return None
    kept = {key: value for key, value in config.items() if key not in GROUP_IGNORED_KEYS}
    return json.dumps(kept, sort_keys=True, default=str)


def _groups_of(dirs: Sequence[Path]) -> list[list[int]]:
    """Indices of ``dirs`` by group, groups and members in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, run_dir in enumerate(dirs):
        key = group_key(run_dir)
        groups.setdefault(("run", i) if key is None else key, []).append(i)
    return list(groups.values())


def _joined(values: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(values))


def _common_dir(dirs: Sequence[Path]) -> Path:
    """The deepest directory holding all of ``dirs`` (the run itself for one run)."""
    if len(dirs) == 1:
        return Path(dirs[0])
    return Path(os.path.commonpath([str(Path(d).absolute()) for d in dirs]))


def _group(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    dirs = [Path(r["run_dir"]) for r in rows]
    groups = []
    for members in _groups_of(dirs):
        member_rows = [dict(rows[i]) for i in members]
        group: dict[str, Any] = {
            "name": _joined(r["name"] for r in member_rows),
            "algorithm": _joined(r["algorithm"] for r in member_rows),
            "run_dirs": [r["run_dir"] for r in member_rows],
            "seeds": [r.get("seed") for r in member_rows],
            "runs": len(member_rows),
            "rows": member_rows,
            "target_accuracy": member_rows[0].get("target_accuracy"),
        }
        for key in GROUP_STATS:
            group[key] = SeedStat(tuple(_number(r.get(key)) for r in member_rows))
        groups.append(group)
    common = [_common_dir([Path(d) for d in g["run_dirs"]]) for g in groups]
    for group, label in zip(groups, _disambiguate([g["name"] for g in groups], common), strict=True):
        group["label"] = label
    return groups


def group_rows(run_dirs: PathLike | Iterable[PathLike], target_accuracy: float | None = None) -> list[dict[str, Any]]:
    """The runs of :func:`compare_rows` by group: runs whose config.toml are equal once the
    :data:`GROUP_IGNORED_KEYS` (``seed``, ``name``, how a run executes) are dropped, so
    runs that differ only by seed. A run without config.toml is a group of its own. One
    dict per group, in order of first appearance:

    * ``label`` (the members' name, with `` [DIR]`` appended, DIR the members'
      common directory, when groups share a name), ``name``, ``algorithm``;
    * ``run_dirs``, ``seeds`` (from config.toml; None without one), ``runs`` (n),
      ``rows`` (the members' :func:`compare_rows` dicts), ``target_accuracy``;
    * for each key of :data:`GROUP_STATS` a :class:`SeedStat`: the per-seed values
      (None where a seed has none), ``mean`` and sample ``std`` (ddof = 1) over those
      that have one, and ``count`` of ``runs``. A seed that never reached the target
      is left out of the to-target means and counted apart, never mixed in.
    """
    return _group(compare_rows(run_dirs, target_accuracy))


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    value = _number(value)
    if value is None:
        return _DASH
    if math.isinf(value):
        return ("inf" if value > 0 else "-inf") + suffix
    return f"{value:{spec}}{suffix}"


def _mb_spec(value: Any) -> str:
    """Two decimals, or three significant digits below 0.1 so that small uplinks do not read 0.00."""
    number = _number(value)
    return ".3g" if number is not None and 0 < abs(number) < 0.1 else ".2f"


def _mb_cell(value: Any) -> str:
    return _fmt(value, _mb_spec(value))


def _percent(value: Any) -> str:
    value = _number(value)
    return _DASH if value is None else f"{100 * value:.2f}"


def _integer(value: Any) -> str:
    value = _number(value)
    return _DASH if value is None or math.isinf(value) else str(int(value))


def _row_total_mb(row: Mapping[str, Any]) -> float | None:
    total = _number(row.get("total_mb"))
    return _plus(_number(row.get("uplink_mb")), _number(row.get("downlink_mb"))) if total is None else total


_VIEWS = (("up", "uplink"), ("down", "downlink"), ("total", "total"))
_OBJECTIVE_SPEC = ".6g"


def _target_label(rows: Sequence[Mapping[str, Any]]) -> str | None:
    targets = {r.get("target_accuracy") for r in rows} - {None}
    if len(targets) > 1:
        raise ValueError(f"rows were computed for different target accuracies: {sorted(targets)}")
    return f"{100 * targets.pop():g}%" if targets else None


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool, list[str]]]:
    """(header, right_aligned, cells) per table column."""
    target = _target_label(rows)
    mb = {
        "uplink": [r.get("uplink_mb") for r in rows],
        "downlink": [r.get("downlink_mb") for r in rows],
        "total": [_row_total_mb(r) for r in rows],
    }
    columns = [
        ("Run", False, [str(r.get("label") or r["name"]) for r in rows]),
        ("Algorithm", False, [str(r["algorithm"]) for r in rows]),
        ("Final acc. (%)", True, [_percent(r["final_accuracy"]) for r in rows]),
        ("Best acc. (%)", True, [_percent(r["best_accuracy"]) for r in rows]),
    ]
    if any(_number(r.get("final_objective")) is not None for r in rows):
        columns.append(("Final objective", True, [_fmt(r.get("final_objective"), _OBJECTIVE_SPEC) for r in rows]))
    for short, which in _VIEWS:
        columns.append((f"{short} MB", True, [_mb_cell(v) for v in mb[which]]))
        if which == "downlink" and any(_number(r.get("initial_downlink_mb")) is not None for r in rows):
            columns.append(("first-download MB", True, [_mb_cell(r.get("initial_downlink_mb")) for r in rows]))
    for short, which in _VIEWS:
        factors = [r.get(f"{which}_compression") for r in rows]
        if any(_number(f) is not None for f in factors):  # only where the dense bytes are known
            columns.append((f"{short} x", True, [_fmt(f, ".1f", "x") for f in factors]))
    if target is not None:
        for short, which in _VIEWS:
            key = f"{which}_mb_to_target"
            cells = [r.get(key, r.get("mb_to_target") if which == "total" else None) for r in rows]
            columns.append((f"{short} MB to {target}", True, [_mb_cell(v) for v in cells]))
        columns.append((f"Rounds to {target}", True, [_integer(r["rounds_to_target"]) for r in rows]))
    return columns


def table_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """The line printed under a comparison table: what its byte columns count."""
    note = (
        "up = uplink; down = downlink, counted once per receiving client (first downloads included); "
        "total = up + down; x = dense fp32 bytes / bytes sent; 1 MB = 10^6 bytes."
    )
    if any(_number(r.get("initial_downlink_mb")) is not None for r in rows):
        note += " first-download MB: the part of down MB that is clients' first download of the model."
    if any(_number(r.get("final_objective")) is not None for r in rows):
        note += " Final objective: the training objective f(x) at the last evaluated row (async.eval_train)."
    target = _target_label(rows)
    if target is not None:
        note += f' "to {target}": cumulative at the first evaluated round with test accuracy >= {target}.'
    return note


def _render_text(columns: Sequence[tuple[str, bool, list[str]]], count: int, note: str) -> str:
    widths = [max(len(header), *(len(c) for c in cells)) for header, _, cells in columns]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_, right, _) in zip(cells, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [line([header for header, _, _ in columns]), "  ".join("-" * w for w in widths)]
    lines += [line([cells[i] for _, _, cells in columns]) for i in range(count)]
    lines += ["", note]
    return "\n".join(lines) + "\n"


def _render_markdown(columns: Sequence[tuple[str, bool, list[str]]], count: int, note: str) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(escape(header) for header, _, _ in columns) + " |",
        "|" + "|".join("---:" if right else ":---" for _, right, _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(escape(cells[i]) for _, _, cells in columns) + " |" for i in range(count)]
    lines += ["", note]
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`compare_rows` output as an aligned plain-text table (numbers right-aligned),
    a blank line and :func:`table_note`."""
    return _render_text(_columns(rows), len(rows), table_note(rows))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`compare_rows` output as a GitHub markdown table (numbers right-aligned),
    a blank line and :func:`table_note` (the blank line keeps the note out of the table)."""
    return _render_markdown(_columns(rows), len(rows), table_note(rows))


def _stat_cell(stat: SeedStat, spec: str | None = None, scale: float = 1.0, integer: bool = False) -> str:
    """``mean ± std`` of the seeds that have a value; one seed's value alone; "(k of n)" after
    it when only k of the group's n seeds have one; "—" when none has. ``spec`` None: the MB
    format chosen by the mean's size."""
    if stat.count == 0:
        return _DASH
    mean = stat.mean * scale
    spec = _mb_spec(mean) if spec is None else spec
    if stat.count == 1:
        text = _integer(mean) if integer else _fmt(mean, spec)
    else:
        shown = _fmt(mean, ".1f" if integer else spec)
        text = f"{shown} ± {_fmt(stat.std * scale, _spread_spec(shown, spec))}"
    return text if stat.count == stat.runs else f"{text} ({stat.count} of {stat.runs})"


def _spread_spec(mean_text: str, spec: str) -> str:
    """The std's format: as many decimals as the mean shows (0.0164 ± 0.0000, not ± 0)."""
    whole, dot, decimals = mean_text.partition(".")
    if "e" in mean_text or "inf" in mean_text or not whole.lstrip("-").isdigit():
        return spec
    return f".{len(decimals) if dot else 0}f"


def _group_columns(groups: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool, list[str]]]:
    rows = [r for g in groups for r in g["rows"]]
    target = _target_label(rows)
    columns = [
        ("Run", False, [str(g["label"]) for g in groups]),
        ("Algorithm", False, [str(g["algorithm"]) for g in groups]),
        ("Seeds", True, [str(g["runs"]) for g in groups]),
        ("Final acc. (%)", True, [_stat_cell(g["final_accuracy"], ".2f", 100.0) for g in groups]),
    ]
    if any(g["final_objective"].count for g in groups):
        columns.append(("Final objective", True, [_stat_cell(g["final_objective"], _OBJECTIVE_SPEC) for g in groups]))
    for short, which in _VIEWS:
        columns.append((f"{short} MB", True, [_stat_cell(g[f"{which}_mb"]) for g in groups]))
        if which == "downlink" and any(g["initial_downlink_mb"].count for g in groups):
            columns.append(("first-download MB", True, [_stat_cell(g["initial_downlink_mb"]) for g in groups]))
    if target is not None:
        for short, which in _VIEWS:
            columns.append(
                (f"{short} MB to {target}", True, [_stat_cell(g[f"{which}_mb_to_target"]) for g in groups])
            )
        columns.append((f"Rounds to {target}", True, [_stat_cell(g["rounds_to_target"], integer=True) for g in groups]))
    return columns


def group_note(groups: Sequence[Mapping[str, Any]]) -> str:
    """The line printed under a grouped table: what a cell is, then :func:`table_note`."""
    rows = [r for g in groups for r in g["rows"]]
    note = (
        "Runs whose configs differ only by seed form a group (Seeds: how many); a cell is the mean ± sample "
        "standard deviation (n - 1) over its seeds, a group of one seed shows its value; "
        '"(k of n)": only k of the n seeds have a value (for "to" columns: reached the target), '
        "the mean and std are over those k. "
    )
    return note + table_note(rows).replace("; x = dense fp32 bytes / bytes sent", "")


def group_text_table(groups: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`group_rows` output as an aligned plain-text table, a blank line and :func:`group_note`."""
    return _render_text(_group_columns(groups), len(groups), group_note(groups))


def group_markdown_table(groups: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`group_rows` output as a GitHub markdown table, a blank line and :func:`group_note`."""
    return _render_markdown(_group_columns(groups), len(groups), group_note(groups))


def compare(run_dirs: PathLike | Iterable[PathLike], target_accuracy: float | None = None) -> str:
    """A plain-text comparison table of runs; see :func:`compare_rows` and :func:`group_rows` for the data.

    One row per run: final and best accuracy; MB uplink ("up"), downlink per
    receiving client ("down") and their sum ("total"); each view's reduction
    against dense fp32 ("x"). With ``target_accuracy`` (a fraction) the up / down /
    total MB and the rounds needed to first reach it follow, "—" when never
    reached. A line under the table says what the byte columns count.

    When some runs differ only by seed (:func:`group_rows`), one row per group
    instead: the number of seeds, then mean ± sample std over the seeds of final
    accuracy, up / down / total MB and, with a target, the MB and rounds to it
    ("(k of n)" where only k seeds reached it; the mean is over those k).
    """
    rows = compare_rows(run_dirs, target_accuracy)
    groups = _group(rows)
    if any(g["runs"] > 1 for g in groups):
        return group_text_table(groups)
    return text_table(rows)


# ----------------------------------------------------------------------------- plots

_ROUND_LABEL = "Round"
_STEP_LABEL = "Server step"
_ACC_LABEL = "Test accuracy (%)"
# The byte views drawn against accuracy (or the objective): (what, x label); the x label ends in "{scale})".
_PANELS = {
    "uplink": (
        "uplink MB",
        "Cumulative uplink MB, sent by all clients\n(1 MB = 10⁶ bytes{scale})",
    ),
    "downlink": (
        "downlink MB",
        "Cumulative downlink MB, received by all clients\n(counted once per receiving client; 1 MB = 10⁶ bytes{scale})",
    ),
    "total": (
        "total MB (uplink + downlink)",
        "Cumulative MB, uplink + downlink, all clients\n(downlink per receiving client; 1 MB = 10⁶ bytes{scale})",
    ),
}
_LINESTYLES = ("-", "--", ":", "-.")
_BAND_ALPHA = 0.2


@dataclass(frozen=True)
class _Quantity:
    """What a block of panels draws on its y axis."""

    key: str  # the curves' key: "accuracy" (accuracy_curves) or "objective" (objective_curves)
    title: str
    ylabel: str
    log: bool
    empty: str  # the text of a panel with nothing to draw


_ACCURACY = _Quantity("accuracy", "Test accuracy", _ACC_LABEL, False, "no evaluated rounds")
_OBJECTIVE = _Quantity("objective", "Training objective", "Training objective f(x) (log scale)", True,
                       "no training objective")
_SUBOPTIMALITY = _Quantity("objective", "Suboptimality f(x) − f*", "f(x) − f* (log scale)", True,
                           "no training objective")


def _label(run_dir: Path) -> tuple[str, str]:
    """(name, algorithm) from summary.json, or the directory name while a run has no summary yet."""
    try:
        summary = read_summary(run_dir)
    except FileNotFoundError:
        return run_dir.name, "?"
    return str(summary["name"]), str(summary["algorithm"])


def _curves_at(metrics: Mapping[str, np.ndarray], keep: np.ndarray, key: str, values: np.ndarray
               ) -> dict[str, np.ndarray]:
    up = np.asarray(metrics["cum_uplink_bytes"], dtype=np.float64)[keep] / MB
    down = np.asarray(metrics["cum_downlink_bytes"], dtype=np.float64)[keep] / MB
    return {
        "round": np.asarray(metrics["round"])[keep],
        key: values[keep],
        "uplink_mb": up,
        "downlink_mb": down,
        "total_mb": up + down,
    }


def accuracy_curves(metrics: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The data the plots draw, at the evaluated rounds only.

    Keys: ``round``, ``accuracy`` (percent), and cumulative ``uplink_mb``,
    ``downlink_mb`` (per receiving client) and ``total_mb`` (their sum), in MB
    (10**6 bytes); missing byte counts are NaN.
    """
    accuracy = np.asarray(metrics["test_accuracy"], dtype=np.float64)
    return _curves_at(metrics, ~np.isnan(accuracy), "accuracy", 100 * accuracy)


def objective_curves(metrics: Mapping[str, np.ndarray], f_star: float | None = None) -> dict[str, np.ndarray]:
    """The training objective where the run recorded one (``train_objective``: the
    asynchronous engine with ``async.eval_train``), as :func:`accuracy_curves` gives accuracy.

    Keys: ``round`` (server steps for an asynchronous run), ``objective`` (f(x), or the
    suboptimality f(x) − f* when ``f_star`` is given), and cumulative ``uplink_mb``,
    ``downlink_mb`` and ``total_mb``. Empty arrays when metrics.csv has no such column.
    """
    if "train_objective" in metrics:
        objective = np.asarray(metrics["train_objective"], dtype=np.float64)
    else:
        objective = np.full(len(metrics["round"]), np.nan)
    if f_star is not None:
        objective = objective - float(f_star)
    return _curves_at(metrics, np.isfinite(objective), "objective", objective)


def _figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axes


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _style_round_axis(ax: Any, title: str, xlabel: str = _ROUND_LABEL, quantity: _Quantity = _ACCURACY,
                      log_y: bool = False) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(quantity.ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, which="both" if log_y else "major", alpha=0.3)


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which ticks to label, written as plain numbers: 0.5, 3, 1,000, 100,000."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        if not super().__call__(x, pos):
            return ""
        return f"{x:,.0f}" if x >= 1 else f"{x:.3g}"


def _style_mb_axis(ax: Any, which: str, any_positive: bool, title_prefix: str = "",
                   quantity: _Quantity = _ACCURACY, log_y: bool = False) -> None:
    what, xlabel = _PANELS[which]
    ax.set_title(f"{title_prefix}{quantity.title} vs {what}")
    ax.set_xlabel(xlabel.format(scale=", log scale" if any_positive else ""))
    ax.set_ylabel(quantity.ylabel)
    if any_positive:
        ax.set_xscale("log")
        # Plain numbers ("3", "10", "200") rather than "3×10⁰"; minor ticks labelled only over short ranges.
        ax.xaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)


def _no_data(ax: Any, text: str = _ACCURACY.empty) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.5")


def _drawable(curves: Mapping[str, np.ndarray], key: str, log_y: bool) -> np.ndarray:
    """Where a curve's y can be drawn: finite, and > 0 on a log axis."""
    y = curves[key]
    return np.isfinite(y) & (y > 0) if log_y else np.isfinite(y)


def _band(ax: Any, x: np.ndarray, curves: Mapping[str, np.ndarray], key: str, keep: np.ndarray, color: str) -> None:
    """mean ± std shaded (fill_between) where the curve is drawn; nothing for a single run."""
    std = curves.get("std")
    if std is None or not keep.any():
        return
    y = curves[key]
    ax.fill_between(x[keep], (y - std)[keep], (y + std)[keep], color=color, alpha=_BAND_ALPHA, linewidth=0)


def _draw_round(ax: Any, curves: Mapping[str, np.ndarray], key: str, log_y: bool, label: str | None = None,
                **style: Any) -> bool:
    """y against the round (server step), with the ± std band of a group; whether any point was drawn."""
    keep = _drawable(curves, key, log_y)
    x = curves["round"]
    ax.plot(x[keep], curves[key][keep], marker="o", markersize=3, label=label, **style)
    _band(ax, x, curves, key, keep, style["color"])
    return bool(keep.any())


def _draw_mb(ax: Any, curves: Mapping[str, np.ndarray], which: str, key: str = "accuracy", log_y: bool = False,
             **style: Any) -> bool:
    """y against one byte view, only where it is > 0 (log x), with the ± std band of a group;
    whether any point was drawn."""
    mb = curves[f"{which}_mb"]
    keep = (mb > 0) & _drawable(curves, key, log_y)  # NaN compares False
    ax.plot(mb[keep], curves[key][keep], marker="o", markersize=3, **style)
    _band(ax, mb, curves, key, keep, style["color"])
    return bool(keep.any())


def _quantities(metrics: Sequence[Mapping[str, np.ndarray]], subtract: bool) -> list[_Quantity]:
    """The blocks a figure draws: accuracy when some run has evaluated accuracy (or no run has
    an objective either), the objective (or f − f*) when some run recorded one."""
    has_accuracy = any(_evaluated(m).size for m in metrics)
    has_objective = any(_objectives(m).size for m in metrics)
    out = [_ACCURACY] if has_accuracy or not has_objective else []
    if has_objective:
        out.append(_SUBOPTIMALITY if subtract else _OBJECTIVE)
    return out


def _f_stars(dirs: Sequence[Path], metrics: Sequence[Mapping[str, np.ndarray]], f_star: float | None
             ) -> list[float | None] | None:
    """f* per run: ``f_star`` for every run when given, else each summary's ``f_star``; None
    (draw f itself) unless every run with an objective has one, so f and f − f* never share an axis."""
    if f_star is not None:
        value = float(f_star)
        if not math.isfinite(value):
            raise ValueError(f"f_star must be a finite number, got {f_star!r}")
        return [value] * len(dirs)
    values: list[float | None] = []
    for run_dir, m in zip(dirs, metrics, strict=True):
        summary = _summary_or_none(run_dir)
        value = _number(summary.get("f_star")) if summary else None
        if value is None and _objectives(m).size:
            return None
        values.append(value)
    return values


def _curves(metrics: Mapping[str, np.ndarray], quantity: _Quantity, f_star: float | None) -> dict[str, np.ndarray]:
    return accuracy_curves(metrics) if quantity.key == "accuracy" else objective_curves(metrics, f_star)


def _step_label(dirs: Sequence[Path]) -> str:
    kinds = {_is_async(d) for d in dirs}
    if kinds == {True}:
        return _STEP_LABEL
    return _ROUND_LABEL if kinds == {False} else f"{_ROUND_LABEL} or server step"


def run_figures(run_dir: PathLike, f_star: float | None = None) -> tuple[Figure, Figure]:
    """The two figures :func:`plot_run` saves: accuracy vs round, and accuracy vs cumulative
    uplink, downlink (per receiving client) and total MB (three panels, log x).

    A run that records a training objective (``train_objective``) has it drawn too (log
    y; f − f* with ``f_star``, or the summary's ``f_star``), in a panel (a row of
    panels) beside (under) the accuracy, or instead of it when the run has no test accuracy.
    """
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    stars = _f_stars([run_dir], [metrics], f_star)
    quantities = _quantities([metrics], stars is not None)
    star = stars[0] if stars is not None else None
    name, algorithm = _label(run_dir)
    prefix = f"{name} ({algorithm})"
    xlabel = _step_label([run_dir])

    n = len(quantities)
    round_fig, round_axes = _figure(1, n, 6.4 * n, 4.5)
    mb_fig, mb_axes = _figure(n, len(_PANELS), 6.4 * len(_PANELS), 4.8 * n)
    mb_fig.suptitle(prefix)
    for q, (ax, quantity) in enumerate(zip(round_axes, quantities, strict=True)):
        curves = _curves(metrics, quantity, star)
        drawn = _draw_round(ax, curves, quantity.key, quantity.log, color="C0")
        if not drawn:
            _no_data(ax, quantity.empty)
        _style_round_axis(ax, f"{prefix}: {_lower_first(quantity.title)} vs {xlabel.lower()}", xlabel, quantity,
                          quantity.log and drawn)
        for ax_mb, which in zip(mb_axes[q * len(_PANELS) : (q + 1) * len(_PANELS)], _PANELS, strict=True):
            drawn = _draw_mb(ax_mb, curves, which, quantity.key, quantity.log, color="C0")
            if not drawn:
                _no_data(ax_mb, quantity.empty)
            _style_mb_axis(ax_mb, which, drawn, quantity=quantity, log_y=quantity.log and drawn)
    return round_fig, mb_fig


def plot_run(run_dir: PathLike, out_dir: PathLike | None = None, f_star: float | None = None) -> tuple[Path, Path]:
    """Write ``accuracy_vs_round.png`` and ``accuracy_vs_mb.png`` for one run (see :func:`run_figures`).

    Files go into ``out_dir`` (created if needed) or the run directory. Only
    evaluated rounds are drawn; ``accuracy_vs_mb.png`` has three panels, accuracy
    against cumulative uplink, downlink (per receiving client) and total bytes /
    10**6 on a log scale. A run that records a training objective has it drawn in the
    same files (beside or instead of accuracy). Works on a run still in progress (no
    summary.json yet: titled by directory name). Returns the two paths.
    """
    run_dir = Path(run_dir)
    round_fig, mb_fig = run_figures(run_dir, f_star)
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    round_path = out / "accuracy_vs_round.png"
    round_fig.savefig(round_path, dpi=120)
    mb_path = out / "accuracy_vs_mb.png"
    mb_fig.savefig(mb_path, dpi=120)
    return round_path, mb_path


def _mean_curves(curves: Sequence[Mapping[str, np.ndarray]], key: str) -> dict[str, np.ndarray]:
    """A group's curve: at the rounds every member has, the mean over the members of ``key`` and
    of the cumulative MB, and ``std``, the sample std (ddof = 1) of ``key``."""
    rounds = reduce(np.intersect1d, [c["round"] for c in curves])
    picked = [{k: v[np.isin(c["round"], rounds)] for k, v in c.items()} for c in curves]
    out: dict[str, np.ndarray] = {"round": rounds}
    for column in (key, "uplink_mb", "downlink_mb", "total_mb"):
        out[column] = np.vstack([p[column] for p in picked]).mean(axis=0)
    out["std"] = np.vstack([p[key] for p in picked]).std(axis=0, ddof=1)
    return out


def compare_figure(run_dirs: PathLike | Iterable[PathLike], f_star: float | None = None) -> Figure:
    """The figure :func:`plot_compare` saves: four panels, a curve per run (per group).

    Accuracy vs round (top left), vs cumulative uplink MB (top right), vs
    cumulative downlink MB per receiving client (bottom left) and vs total MB
    (bottom right), the MB axes log scale. A run keeps its colour (and line
    style) in every panel; one legend under the panels labels the curves
    ``name (algorithm)``, with `` [DIR]`` appended where runs share that label.

    Runs that differ only by seed (:func:`group_key`) are one curve: the mean over
    the seeds at the evaluated rounds all of them have, against the round and
    against the mean cumulative MB, with a band of ± one sample std of the accuracy
    (fill_between); the legend says how many seeds. When runs record a training
    objective, four more panels under these draw it (log y; f − f* with ``f_star``,
    or when every such run's summary has ``f_star``); a figure of runs that all lack
    test accuracy draws only the objective. Asynchronous runs' x axis is the server step.
    """
    dirs = expand_runs(run_dirs)
    if not dirs:
        raise ValueError("plot_compare: no run directories given")
    metrics = [read_metrics(d) for d in dirs]
    stars = _f_stars(dirs, metrics, f_star)
    quantities = _quantities(metrics, stars is not None)
    groups = _groups_of(dirs)
    names = [_label(d) for d in dirs]
    labels = _disambiguate(
        [f"{_joined(names[i][0] for i in g)} ({_joined(names[i][1] for i in g)})" for g in groups],
        [_common_dir([dirs[i] for i in g]) for g in groups],
    )
    labels = [label if len(g) == 1 else f"{label}, mean ± std of {len(g)} seeds" for label, g in zip(
        labels, groups, strict=True)]
    xlabel = _step_label(dirs)

    fig, axes = _figure(2 * len(quantities), 2, 12.8, 10.0 * len(quantities))
    handles: dict[str, Any] = {}
    for q, quantity in enumerate(quantities):
        ax_round, *ax_mb = axes[4 * q : 4 * q + 4]
        any_points = False
        any_positive = dict.fromkeys(_PANELS, False)
        for i, (members, label) in enumerate(zip(groups, labels, strict=True)):
            star = [stars[j] if stars is not None else None for j in members]
            curves = [_curves(metrics[j], quantity, s) for j, s in zip(members, star, strict=True)]
            curves = [c for c in curves if c["round"].size]
            if not curves:
                continue
            group_curves = curves[0] if len(curves) == 1 else _mean_curves(curves, quantity.key)
            style = {"color": f"C{i % 10}", "linestyle": _LINESTYLES[(i // 10) % len(_LINESTYLES)]}
            any_points |= _draw_round(ax_round, group_curves, quantity.key, quantity.log, label=label, **style)
            for ax, which in zip(ax_mb, _PANELS, strict=True):
                any_positive[which] |= _draw_mb(ax, group_curves, which, quantity.key, quantity.log, **style)
        if not any_points:
            _no_data(ax_round, quantity.empty)
        _style_round_axis(ax_round, f"{quantity.title} vs {xlabel.lower()}", xlabel, quantity,
                          quantity.log and any_points)
        for ax, which in zip(ax_mb, _PANELS, strict=True):
            if not any_positive[which]:
                _no_data(ax, quantity.empty)
            _style_mb_axis(ax, which, any_positive[which], quantity=quantity,
                           log_y=quantity.log and any_positive[which])
        for handle, label in zip(*ax_round.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    order = [label for label in labels if label in handles]
    fig.legend([handles[label] for label in order], order, loc="outside lower center",
               ncols=max(1, min(len(order), 3)), fontsize="small")
    return fig


def plot_compare(run_dirs: PathLike | Iterable[PathLike], path: PathLike, f_star: float | None = None) -> Path:
    """One PNG at ``path`` with the panels of :func:`compare_figure`. Returns the path."""
    fig = compare_figure(run_dirs, f_star)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
