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
    "accuracy_curves",
    "bytes_to_target",
    "compare",
    "compare_figure",
    "compare_rows",
    "markdown_table",
    "plot_compare",
    "plot_run",
    "read_metrics",
    "read_summary",
    "rounds_to_target",
    "run_figures",
    "table_note",
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
      several runs share it), ``algorithm``, ``rounds``;
    * ``final_accuracy``, ``best_accuracy`` (fractions);
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
    that are null or absent.
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
        total = _plus(uplink, downlink)
        broadcast = pick("downlink_broadcast_bytes", _last(metrics, "cum_downlink_broadcast_bytes"))
        initial = _number(summary.get("initial_downlink_bytes"))
        dense_uplink = pick("dense_uplink_bytes", _last(metrics, "cum_dense_uplink_bytes"))
        dense_downlink = pick("dense_downlink_bytes", _last(metrics, "cum_dense_downlink_bytes"))
        dense_total = _plus(dense_uplink, dense_downlink)
        rounds = pick("rounds", _last(metrics, "round"))

        row: dict[str, Any] = {
            "run_dir": str(run_dir),
            "name": str(summary["name"]),
            "label": str(summary["name"]),
            "algorithm": str(summary["algorithm"]),
            "rounds": None if rounds is None else int(rounds),
            "final_accuracy": pick("final_accuracy", float(evaluated[-1]) if evaluated.size else None),
            "best_accuracy": pick("best_accuracy", float(evaluated.max()) if evaluated.size else None),
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


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    value = _number(value)
    if value is None:
        return _DASH
    if math.isinf(value):
        return ("inf" if value > 0 else "-inf") + suffix
    return f"{value:{spec}}{suffix}"


def _mb_cell(value: Any) -> str:
    """MB with two decimals, or three significant digits below 0.1 so that small uplinks do not read 0.00."""
    number = _number(value)
    return _fmt(value, ".3g" if number is not None and 0 < abs(number) < 0.1 else ".2f")


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
    target = _target_label(rows)
    if target is not None:
        note += f' "to {target}": cumulative at the first evaluated round with test accuracy >= {target}.'
    return note


def text_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`compare_rows` output as an aligned plain-text table (numbers right-aligned),
    a blank line and :func:`table_note`."""
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
    lines += ["", table_note(rows)]
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`compare_rows` output as a GitHub markdown table (numbers right-aligned),
    a blank line and :func:`table_note` (the blank line keeps the note out of the table)."""
    columns = _columns(rows)

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(escape(header) for header, _, _ in columns) + " |",
        "|" + "|".join("---:" if right else ":---" for _, right, _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(escape(cells[i]) for _, _, cells in columns) + " |" for i in range(len(rows))]
    lines += ["", table_note(rows)]
    return "\n".join(lines) + "\n"


def compare(run_dirs: PathLike | Iterable[PathLike], target_accuracy: float | None = None) -> str:
    """A plain-text comparison table of runs, one row per run; see :func:`compare_rows` for the data.

    Columns: final and best accuracy; MB uplink ("up"), downlink per receiving
    client ("down") and their sum ("total"); each view's reduction against dense
    fp32 ("x"). With ``target_accuracy`` (a fraction) the up / down / total MB and
    the rounds needed to first reach it follow, "—" when never reached. A line
    under the table says what the byte columns count.
    """
    return text_table(compare_rows(run_dirs, target_accuracy))


# ----------------------------------------------------------------------------- plots

_ROUND_LABEL = "Round"
_ACC_LABEL = "Test accuracy (%)"
# The byte views drawn against accuracy: (title, x label); the x label ends in "{scale})".
_PANELS = {
    "uplink": (
        "Test accuracy vs uplink MB",
        "Cumulative uplink MB, sent by all clients\n(1 MB = 10⁶ bytes{scale})",
    ),
    "downlink": (
        "Test accuracy vs downlink MB",
        "Cumulative downlink MB, received by all clients\n(counted once per receiving client; 1 MB = 10⁶ bytes{scale})",
    ),
    "total": (
        "Test accuracy vs total MB (uplink + downlink)",
        "Cumulative MB, uplink + downlink, all clients\n(downlink per receiving client; 1 MB = 10⁶ bytes{scale})",
    ),
}
_LINESTYLES = ("-", "--", ":", "-.")


def _label(run_dir: Path) -> tuple[str, str]:
    """(name, algorithm) from summary.json, or the directory name while a run has no summary yet."""
    try:
        summary = read_summary(run_dir)
    except FileNotFoundError:
        return run_dir.name, "?"
    return str(summary["name"]), str(summary["algorithm"])


def accuracy_curves(metrics: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The data the plots draw, at the evaluated rounds only.

    Keys: ``round``, ``accuracy`` (percent), and cumulative ``uplink_mb``,
    ``downlink_mb`` (per receiving client) and ``total_mb`` (their sum), in MB
    (10**6 bytes); missing byte counts are NaN.
    """
    accuracy = np.asarray(metrics["test_accuracy"], dtype=np.float64)
    keep = ~np.isnan(accuracy)
    up = np.asarray(metrics["cum_uplink_bytes"], dtype=np.float64)[keep] / MB
    down = np.asarray(metrics["cum_downlink_bytes"], dtype=np.float64)[keep] / MB
    return {
        "round": np.asarray(metrics["round"])[keep],
        "accuracy": 100 * accuracy[keep],
        "uplink_mb": up,
        "downlink_mb": down,
        "total_mb": up + down,
    }


def _figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
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


def _style_mb_axis(ax: Any, which: str, any_positive: bool, title_prefix: str = "") -> None:
    title, xlabel = _PANELS[which]
    ax.set_title(title_prefix + title)
    ax.set_xlabel(xlabel.format(scale=", log scale" if any_positive else ""))
    ax.set_ylabel(_ACC_LABEL)
    if any_positive:
        ax.set_xscale("log")
        # Plain numbers ("3", "10", "200") rather than "3×10⁰"; minor ticks labelled only over short ranges.
        ax.xaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.grid(True, which="both", alpha=0.3)


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no evaluated rounds", transform=ax.transAxes, ha="center", va="center", color="0.5")


def _draw_mb(ax: Any, curves: Mapping[str, np.ndarray], which: str, **style: Any) -> bool:
    """Accuracy against one byte view, only where it is > 0 (log x); whether any point was drawn."""
    mb = curves[f"{which}_mb"]
    positive = mb > 0  # NaN compares False
    ax.plot(mb[positive], curves["accuracy"][positive], marker="o", markersize=3, **style)
    return bool(positive.any())


def run_figures(run_dir: PathLike) -> tuple[Figure, Figure]:
    """The two figures :func:`plot_run` saves: accuracy vs round, and accuracy vs cumulative
    uplink, downlink (per receiving client) and total MB (three panels, log x)."""
    run_dir = Path(run_dir)
    curves = accuracy_curves(read_metrics(run_dir))
    name, algorithm = _label(run_dir)
    prefix = f"{name} ({algorithm})"

    round_fig, (ax,) = _figure(1, 1, 6.4, 4.5)
    ax.plot(curves["round"], curves["accuracy"], marker="o", markersize=3, color="C0")
    if not curves["round"].size:
        _no_data(ax)
    _style_round_axis(ax, f"{prefix}: test accuracy vs round")

    mb_fig, axes = _figure(1, len(_PANELS), 6.4 * len(_PANELS), 4.8)
    mb_fig.suptitle(prefix)
    for ax, which in zip(axes, _PANELS, strict=True):
        drawn = _draw_mb(ax, curves, which, color="C0")
        if not drawn:
            _no_data(ax)
        _style_mb_axis(ax, which, drawn)
    return round_fig, mb_fig


def plot_run(run_dir: PathLike, out_dir: PathLike | None = None) -> tuple[Path, Path]:
    """Write ``accuracy_vs_round.png`` and ``accuracy_vs_mb.png`` for one run (see :func:`run_figures`).

    Files go into ``out_dir`` (created if needed) or the run directory. Only
    evaluated rounds are drawn; ``accuracy_vs_mb.png`` has three panels, accuracy
    against cumulative uplink, downlink (per receiving client) and total bytes /
    10**6 on a log scale. Works on a run still in progress (no summary.json yet:
    titled by directory name). Returns the two paths.
    """
    run_dir = Path(run_dir)
    round_fig, mb_fig = run_figures(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    round_path = out / "accuracy_vs_round.png"
    round_fig.savefig(round_path, dpi=120)
    mb_path = out / "accuracy_vs_mb.png"
    mb_fig.savefig(mb_path, dpi=120)
    return round_path, mb_path


def compare_figure(run_dirs: PathLike | Iterable[PathLike]) -> Figure:
    """The figure :func:`plot_compare` saves: four panels, a curve per run.

    Accuracy vs round (top left), vs cumulative uplink MB (top right), vs
    cumulative downlink MB per receiving client (bottom left) and vs total MB
    (bottom right), the MB axes log scale. A run keeps its colour (and line
    style) in every panel; one legend under the panels labels the curves
    ``name (algorithm)``, with `` [DIR]`` appended where runs share that label.
    """
    dirs = _as_dirs(run_dirs)
    if not dirs:
        raise ValueError("plot_compare: no run directories given")
    names = [_label(d) for d in dirs]
    labels = _disambiguate([f"{name} ({algorithm})" for name, algorithm in names], dirs)

    fig, (ax_round, *ax_mb) = _figure(2, 2, 12.8, 10.0)
    any_points = False
    any_positive = dict.fromkeys(_PANELS, False)
    for i, (run_dir, label) in enumerate(zip(dirs, labels, strict=True)):
        curves = accuracy_curves(read_metrics(run_dir))
        style = {"color": f"C{i % 10}", "linestyle": _LINESTYLES[(i // 10) % len(_LINESTYLES)]}
        ax_round.plot(curves["round"], curves["accuracy"], marker="o", markersize=3, label=label, **style)
        any_points |= bool(curves["round"].size)
        for ax, which in zip(ax_mb, _PANELS, strict=True):
            any_positive[which] |= _draw_mb(ax, curves, which, **style)
    if not any_points:
        _no_data(ax_round)
    _style_round_axis(ax_round, "Test accuracy vs round")
    for ax, which in zip(ax_mb, _PANELS, strict=True):
        if not any_positive[which]:
            _no_data(ax)
        _style_mb_axis(ax, which, any_positive[which])
    fig.legend(
        *ax_round.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(dirs), 3), fontsize="small"
    )
    return fig


def plot_compare(run_dirs: PathLike | Iterable[PathLike], path: PathLike) -> Path:
    """One PNG at ``path`` with the four panels of :func:`compare_figure`. Returns the path."""
    fig = compare_figure(run_dirs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
