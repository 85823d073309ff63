"""Reading, plotting and comparing finished (or running) fedpress runs.

A run directory holds ``metrics.csv`` (one row per round) and ``summary.json``.
This module reads them back, draws accuracy curves against rounds and against
bytes sent, and builds comparison tables in plain text and GitHub markdown.

Conventions:

* accuracies are fractions in [0, 1] in data (``read_metrics``, ``compare_rows``)
  and percentages only in rendered tables and plot axes;
* "MB" is 10**6 bytes;
* "bytes sent" (``which="total"``) is uplink plus downlink counted once per
  receiving client (``cum_downlink_bytes``), not the multicast view.

Plots use matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``),
so nothing here touches pyplot or the process-wide backend.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

__all__ = [
    "FLOAT_COLUMNS",
    "INT_COLUMNS",
    "METRICS_COLUMNS",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "MB",
    "bytes_to_target",
    "compare",
    "compare_rows",
    "markdown_table",
    "plot_compare",
    "plot_run",
    "read_metrics",
    "read_summary",
    "rounds_to_target",
    "text_table",
]

PathLike = str | os.PathLike

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
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
REQUIRED_SUMMARY_KEYS = ("name", "algorithm")

_DASH = "—"
_WHICH = {
    "total": ("cum_uplink_bytes", "cum_downlink_bytes"),
    "uplink": ("cum_uplink_bytes",),
    "downlink": ("cum_downlink_bytes",),
}


# ----------------------------------------------------------------------------- reading


def _run_file(run_dir: PathLike, filename: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    path = run_dir / filename
    if not path.is_file():
        raise FileNotFoundError(f"{filename} not found: {path} (is {run_dir} a fedpress run directory?)")
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
    matter; columns this module does not know (later additions such as
    ``virtual_time``) are ignored. Empty cells become NaN. Float columns are
    float64; integer columns are int64 when every cell is present and integral,
    float64 (NaN for empties) otherwise.

    Raises FileNotFoundError when the directory or file is missing and
    ValueError (naming the file, and the line and column where it applies) for
    an empty file, missing or duplicate columns, short rows or unparseable cells.
    """
    path = _run_file(run_dir, METRICS_FILE)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header row with columns {', '.join(METRICS_COLUMNS)}")
        header = [name.strip() for name in header]
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise ValueError(f"{path}: duplicate column(s) {', '.join(map(repr, duplicates))}")
        missing = [name for name in METRICS_COLUMNS if name not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, header))}"
            )
        index = {name: header.index(name) for name in METRICS_COLUMNS}
        cells: dict[str, list[int | float]] = {name: [] for name in METRICS_COLUMNS}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            line = reader.line_num
            if len(row) < len(header):
                raise ValueError(f"{path}, line {line}: expected {len(header)} fields, got {len(row)}")
            for name, i in index.items():
                text = row[i].strip()
                if not text:
                    cells[name].append(math.nan)
                    continue
                try:
                    cells[name].append(_parse_number(text, integer=name in INT_COLUMNS))
                except ValueError:
                    raise ValueError(
                        f"{path}, line {line}, column {name!r}: cannot parse {text!r} as a number"
                    ) from None

    out: dict[str, np.ndarray] = {}
    for name in METRICS_COLUMNS:
        values = cells[name]
        if name in INT_COLUMNS and all(isinstance(v, int) for v in values):
            out[name] = np.array(values, dtype=np.int64)
        else:
            out[name] = np.array(values, dtype=np.float64)
    return out


def read_summary(run_dir: PathLike) -> dict[str, Any]:
    """Read ``run_dir/summary.json``; it must be a JSON object with at least ``name`` and ``algorithm``."""
    path = _run_file(run_dir, SUMMARY_FILE)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    missing = [key for key in REQUIRED_SUMMARY_KEYS if key not in summary]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(map(repr, missing))}")
    return summary


# ----------------------------------------------------------------------------- targets


def _check_target(target: float) -> float:
    target = float(target)
    if not math.isfinite(target) or not 0.0 <= target <= 1.0:
        hint = f"; did you mean {target / 100:g}?" if 1.0 < target <= 100.0 else ""
        raise ValueError(f"target accuracy must be a fraction in [0, 1], got {target:g}{hint}")
    return target


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
    never count. Returns None when the target is never reached.
    """
    if which not in _WHICH:
        raise ValueError(f"which must be one of {', '.join(map(repr, _WHICH))}, got {which!r}")
    i = _first_reached(metrics, target)
    if i is None:
        return None
    return float(sum(int(metrics[column][i]) for column in _WHICH[which]))


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


def _last(metrics: Mapping[str, np.ndarray], column: str) -> float | None:
    values = metrics[column]
    return _number(values[-1]) if len(values) else None


def compare_rows(run_dirs: PathLike | Iterable[PathLike], target_accuracy: float | None = None) -> list[dict[str, Any]]:
    """One dict per run, the data behind :func:`compare` and :func:`markdown_table`.

    Keys: ``run_dir``, ``name``, ``algorithm``, ``rounds``, ``final_accuracy`` and
    ``best_accuracy`` (fractions), ``uplink_mb``, ``downlink_mb`` (per receiving
    client), ``downlink_broadcast_mb``, ``uplink_compression`` (dense / actual
    uplink bytes), ``target_accuracy``, ``mb_to_target`` (uplink + downlink) and
    ``uplink_mb_to_target``, ``rounds_to_target``. Missing values are None: the target fields when no
    target is given or it is never reached. Summary values are used where
    present; metrics.csv fills in any that are null or absent.
    """
    dirs = _as_dirs(run_dirs)
    if not dirs:
        raise ValueError("compare_rows: no run directories given")
    if target_accuracy is not None:
        target_accuracy = _check_target(target_accuracy)

    rows = []
    for run_dir in dirs:
        summary = read_summary(run_dir)
        metrics = read_metrics(run_dir)
        evaluated = _evaluated(metrics)

        def pick(key: str, fallback: float | None, summary: dict[str, Any] = summary) -> float | None:
            value = _number(summary.get(key))
            return fallback if value is None else value

        uplink = pick("uplink_bytes", _last(metrics, "cum_uplink_bytes"))
        downlink = pick("downlink_bytes", _last(metrics, "cum_downlink_bytes"))
        broadcast = pick("downlink_broadcast_bytes", _last(metrics, "cum_downlink_broadcast_bytes"))
        dense_uplink = pick("dense_uplink_bytes", _last(metrics, "cum_dense_uplink_bytes"))
        ratio = dense_uplink / uplink if dense_uplink is not None and uplink else None
        rounds = pick("rounds", _last(metrics, "round"))

        row: dict[str, Any] = {
            "run_dir": str(run_dir),
            "name": str(summary["name"]),
            "algorithm": str(summary["algorithm"]),
            "rounds": None if rounds is None else int(rounds),
            "final_accuracy": pick("final_accuracy", float(evaluated[-1]) if evaluated.size else None),
            "best_accuracy": pick("best_accuracy", float(evaluated.max()) if evaluated.size else None),
            "uplink_mb": None if uplink is None else uplink / MB,
            "downlink_mb": None if downlink is None else downlink / MB,
            "downlink_broadcast_mb": None if broadcast is None else broadcast / MB,
            "uplink_compression": pick("uplink_compression", ratio),
            "target_accuracy": target_accuracy,
            "mb_to_target": None,
            "uplink_mb_to_target": None,
            "rounds_to_target": None,
        }
        if target_accuracy is not None:
            total = bytes_to_target(metrics, target_accuracy)
            row["mb_to_target"] = None if total is None else total / MB
            up = bytes_to_target(metrics, target_accuracy, "uplink")
            row["uplink_mb_to_target"] = None if up is None else up / MB
            row["rounds_to_target"] = rounds_to_target(metrics, target_accuracy)
        rows.append(row)
    return rows


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    value = _number(value)
    if value is None:
        return _DASH
    if math.isinf(value):
        return ("inf" if value > 0 else "-inf") + suffix
    return f"{value:{spec}}{suffix}"


def _percent(value: Any) -> str:
    value = _number(value)
    return _DASH if value is None else f"{100 * value:.2f}"


def _integer(value: Any) -> str:
    value = _number(value)
    return _DASH if value is None or math.isinf(value) else str(int(value))


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool, list[str]]]:
    """(header, right_aligned, cells) per table column."""
    columns = [
        ("Run", False, [str(r["name"]) for r in rows]),
        ("Algorithm", False, [str(r["algorithm"]) for r in rows]),
        ("Final acc. (%)", True, [_percent(r["final_accuracy"]) for r in rows]),
        ("Best acc. (%)", True, [_percent(r["best_accuracy"]) for r in rows]),
        ("MB up", True, [_fmt(r["uplink_mb"], ".2f") for r in rows]),
        ("MB down", True, [_fmt(r["downlink_mb"], ".2f") for r in rows]),
        ("Up compression", True, [_fmt(r["uplink_compression"], ".1f", "x") for r in rows]),
    ]
    targets = {r.get("target_accuracy") for r in rows} - {None}
    if len(targets) > 1:
        raise ValueError(f"rows were computed for different target accuracies: {sorted(targets)}")
    if targets:
        label = f"{100 * targets.pop():g}%"
        columns += [
            (f"MB to {label}", True, [_fmt(r["mb_to_target"], ".2f") for r in rows]),
            (f"MB up to {label}", True, [_fmt(r.get("uplink_mb_to_target"), ".2f") for r in rows]),
            (f"Rounds to {label}", True, [_integer(r["rounds_to_target"]) for r in rows]),
        ]
    return columns


def text_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`compare_rows` output as an aligned plain-text table (numbers right-aligned)."""
    columns = _columns(rows)
    widths = [max(len(header), *(len(c) for c in cells)) for header, _, cells in columns]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_, right, _) in zip(cells, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [line([header for header, _, _ in columns]), "  ".join("-" * w for w in widths)]
    lines += [line([cells[i] for _, _, cells in columns]) for i in range(len(rows))]
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`compare_rows` output as a GitHub markdown table (numbers right-aligned)."""
    columns = _columns(rows)

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(escape(header) for header, _, _ in columns) + " |",
        "|" + "|".join("---:" if right else ":---" for _, right, _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(escape(cells[i]) for _, _, cells in columns) + " |" for i in range(len(rows))]
    return "\n".join(lines) + "\n"


def compare(run_dirs: PathLike | Iterable[PathLike], target_accuracy: float | None = None) -> str:
    """A plain-text comparison table of runs, one row per run; see :func:`compare_rows` for the data.

    With ``target_accuracy`` (a fraction) two more columns give the MB (uplink +
    downlink) and rounds needed to first reach it, "—" when never reached.
    """
    return text_table(compare_rows(run_dirs, target_accuracy))


# ----------------------------------------------------------------------------- plots

_ROUND_LABEL = "Round"
_ACC_LABEL = "Test accuracy (%)"
_MB_LABEL = "Cumulative MB sent, uplink + downlink per client (1 MB = 10⁶ bytes, log scale)"


def _label(run_dir: Path) -> tuple[str, str]:
    """(name, algorithm) from summary.json, or the directory name while a run has no summary yet."""
    try:
        summary = read_summary(run_dir)
    except FileNotFoundError:
        return run_dir.name, "?"
    return str(summary["name"]), str(summary["algorithm"])


def _curves(metrics: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, accuracy %, cumulative MB) at the evaluated rounds."""
    accuracy = np.asarray(metrics["test_accuracy"], dtype=np.float64)
    keep = ~np.isnan(accuracy)
    total = np.asarray(metrics["cum_uplink_bytes"], dtype=np.float64) + np.asarray(
        metrics["cum_downlink_bytes"], dtype=np.float64
    )
    return np.asarray(metrics["round"])[keep], 100 * accuracy[keep], total[keep] / MB


def _figure(ncols: int, width: float) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _style_round_axis(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(_ROUND_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(_ACC_LABEL)
    ax.grid(True, alpha=0.3)


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which ticks to label, written as plain numbers: 0.5, 3, 1,000, 100,000."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        if not super().__call__(x, pos):
            return ""
        return f"{x:,.0f}" if x >= 1 else f"{x:.3g}"


def _style_mb_axis(ax: Any, title: str, any_positive: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel(_MB_LABEL if any_positive else _MB_LABEL.replace(", log scale", ""))
    ax.set_ylabel(_ACC_LABEL)
    if any_positive:
        ax.set_xscale("log")
        # Plain numbers ("3", "10", "200") rather than "3×10⁰"; minor ticks labelled only over short ranges.
        ax.xaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.grid(True, which="both", alpha=0.3)


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no evaluated rounds", transform=ax.transAxes, ha="center", va="center", color="0.5")


def plot_run(run_dir: PathLike, out_dir: PathLike | None = None) -> tuple[Path, Path]:
    """Write ``accuracy_vs_round.png`` and ``accuracy_vs_mb.png`` for one run.

    Files go into ``out_dir`` (created if needed) or the run directory. Only
    evaluated rounds are drawn; the MB plot's x axis is cumulative uplink +
    downlink (per receiving client) bytes / 10**6 on a log scale. Works on a
    run still in progress (no summary.json yet: titled by directory name).
    Returns the two paths.
    """
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    name, algorithm = _label(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    rounds, accuracy, mb = _curves(metrics)

    fig, (ax,) = _figure(1, 6.4)
    ax.plot(rounds, accuracy, marker="o", markersize=3, color="C0")
    if not rounds.size:
        _no_data(ax)
    _style_round_axis(ax, f"{name} ({algorithm}): test accuracy vs round")
    round_path = out / "accuracy_vs_round.png"
    fig.savefig(round_path, dpi=120)

    positive = mb > 0
    fig, (ax,) = _figure(1, 6.4)
    ax.plot(mb[positive], accuracy[positive], marker="o", markersize=3, color="C0")
    if not positive.any():
        _no_data(ax)
    _style_mb_axis(ax, f"{name} ({algorithm}): test accuracy vs MB sent", bool(positive.any()))
    mb_path = out / "accuracy_vs_mb.png"
    fig.savefig(mb_path, dpi=120)
    return round_path, mb_path


def plot_compare(run_dirs: PathLike | Iterable[PathLike], path: PathLike) -> Path:
    """One PNG at ``path``: accuracy vs round (left) and vs cumulative MB, log x (right), a curve per run.

    Curves are labelled ``name (algorithm)`` and keep the same colour in both panels. Returns the path.
    """
    dirs = _as_dirs(run_dirs)
    if not dirs:
        raise ValueError("plot_compare: no run directories given")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    fig, (ax_round, ax_mb) = _figure(2, 12.8)
    any_points = any_positive = False
    for i, run_dir in enumerate(dirs):
        name, algorithm = _label(run_dir)
        rounds, accuracy, mb = _curves(read_metrics(run_dir))
        positive = mb > 0
        label = f"{name} ({algorithm})"
        ax_round.plot(rounds, accuracy, marker="o", markersize=3, color=f"C{i % 10}", label=label)
        ax_mb.plot(mb[positive], accuracy[positive], marker="o", markersize=3, color=f"C{i % 10}", label=label)
        any_points |= bool(rounds.size)
        any_positive |= bool(positive.any())
    if not any_points:
        _no_data(ax_round)
    if not any_positive:
        _no_data(ax_mb)
    _style_round_axis(ax_round, "Test accuracy vs round")
    _style_mb_axis(ax_mb, "Test accuracy vs MB sent", any_positive)
    ax_round.legend(fontsize="small")
    ax_mb.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path
