"""fedpress.report on synthetic run directories whose numbers are known by hand."""

import csv
import json
import math
import struct

import numpy as np
import pytest

from fedpress.report import (
    METRICS_COLUMNS,
    bytes_to_target,
    compare,
    compare_rows,
    markdown_table,
    plot_compare,
    plot_run,
    read_metrics,
    read_summary,
    rounds_to_target,
    text_table,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(
    root,
    dirname,
    *,
    name,
    algorithm,
    accuracy,
    up,
    down,
    dense_up,
    clients=10,
    extra=None,
    column_order=None,
    summary_overrides=None,
):
    """Write metrics.csv + summary.json the way a fedpress run does.

    accuracy: per round, None where not evaluated; up/down/dense_up: bytes per round
    (down per receiving client; the broadcast itself is down / clients).
    extra: {column: [cells]} of unknown columns to add.
    """
    run = root / dirname
    run.mkdir()
    rows, cum = [], dict.fromkeys(("up", "down", "bc", "dup", "ddown"), 0)
    for r, acc in enumerate(accuracy, start=1):
        bc = down // clients
        cum["up"] += up
        cum["down"] += down
        cum["bc"] += bc
        cum["dup"] += dense_up
        cum["ddown"] += 4 * down
        row = {
            "round": r,
            "wall_seconds": 0.25 * r,
            "test_accuracy": "" if acc is None else acc,
            "test_loss": "" if acc is None else round(1 - acc, 4),
            "train_loss": 0.5,
            "clients": clients,
            "rejected": 0,
            "uplink_bytes": up,
            "downlink_bytes": down,
            "downlink_broadcast_bytes": bc,
            "dense_uplink_bytes": dense_up,
            "dense_downlink_bytes": 4 * down,
            "cum_uplink_bytes": cum["up"],
            "cum_downlink_bytes": cum["down"],
            "cum_downlink_broadcast_bytes": cum["bc"],
            "cum_dense_uplink_bytes": cum["dup"],
            "cum_dense_downlink_bytes": cum["ddown"],
        }
        for column, cells in (extra or {}).items():
            row[column] = cells[r - 1]
        rows.append(row)
    header = list(column_order or METRICS_COLUMNS) + list(extra or {})
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    evaluated = [a for a in accuracy if a is not None]
    summary = {
        "name": name,
        "algorithm": algorithm,
        "dataset": "mnist",
        "model": "mlp",
        "num_parameters": 1000,
        "rounds": len(accuracy),
        "final_accuracy": evaluated[-1] if evaluated else None,
        "best_accuracy": max(evaluated) if evaluated else None,
        "uplink_bytes": cum["up"],
        "downlink_bytes": cum["down"],
        "downlink_broadcast_bytes": cum["bc"],
        "dense_uplink_bytes": cum["dup"],
        "dense_downlink_bytes": cum["ddown"],
        "uplink_compression": cum["dup"] / cum["up"],
        "total_compression": (cum["dup"] + cum["ddown"]) / (cum["up"] + cum["down"]),
        "rejected_updates": 0,
        "wall_seconds": 1.0,
    }
    summary.update(summary_overrides or {})
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def topk_run(tmp_path):
    # Evaluated every 2 rounds; best (0.85, round 4) is not the final (0.80, round 6).
    # Cumulative uplink at round r: 250_000 r; downlink: 1_000_000 r.
    return write_run(
        tmp_path,
        "topk",
        name="mnist-topk",
        algorithm="topk",
        accuracy=[None, 0.5, None, 0.85, None, 0.8],
        up=250_000,
        down=1_000_000,
        dense_up=2_000_000,
    )


@pytest.fixture
def fedavg_run(tmp_path):
    # Evaluated every round, never reaches 0.8. Cumulative uplink at round r: 1_234_567 r.
    return write_run(
        tmp_path,
        "fedavg",
        name="mnist-fedavg",
        algorithm="fedavg",
        accuracy=[0.3, 0.6, 0.7, 0.75],
        up=1_234_567,
        down=2_000_000,
        dense_up=1_234_567,
    )


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------- reading


def test_read_metrics_parses_empty_cells_as_nan_and_ints_as_int64(topk_run):
    m = read_metrics(topk_run)
    assert list(m) == list(METRICS_COLUMNS)
    acc = m["test_accuracy"]
    assert acc.dtype == np.float64
    assert np.isnan(acc[[0, 2, 4]]).all()
    np.testing.assert_array_equal(acc[[1, 3, 5]], [0.5, 0.85, 0.8])
    assert np.isnan(m["test_loss"][0]) and m["test_loss"][1] == 0.5
    for column in ("round", "clients", "cum_uplink_bytes", "cum_downlink_broadcast_bytes"):
        assert m[column].dtype == np.int64, column
    np.testing.assert_array_equal(m["round"], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(m["cum_downlink_bytes"], [1_000_000 * r for r in range(1, 7)])
    np.testing.assert_array_equal(m["cum_downlink_broadcast_bytes"], [100_000 * r for r in range(1, 7)])


def test_int_column_with_empty_cell_becomes_float_with_nan(tmp_path):
    run = write_run(
        tmp_path,
        "r",
        name="r",
        algorithm="a",
        accuracy=[0.1, 0.2],
        up=1,
        down=10,
        dense_up=2,
        extra={"virtual_time": ["", ""]},
    )
    text = (run / "metrics.csv").read_text().splitlines()
    header = text[0].split(",")
    cells = text[2].split(",")
    cells[header.index("rejected")] = ""
    (run / "metrics.csv").write_text("\n".join([text[0], text[1], ",".join(cells)]) + "\n")
    rejected = read_metrics(run)["rejected"]
    assert rejected.dtype == np.float64
    assert rejected[0] == 0 and np.isnan(rejected[1])


def test_unknown_columns_are_ignored_and_columns_read_by_name(tmp_path):
    shuffled = list(reversed(METRICS_COLUMNS))
    run = write_run(
        tmp_path,
        "r",
        name="r",
        algorithm="a",
        accuracy=[None, 0.4, 0.9],
        up=7,
        down=30,
        dense_up=70,
        column_order=shuffled,
        extra={"virtual_time": [1.5, 3.0, 4.5], "density": [0.1, 0.1, ""], "note": ["x", "y,z", "w"]},
    )
    m = read_metrics(run)
    assert set(m) == set(METRICS_COLUMNS)
    np.testing.assert_array_equal(m["round"], [1, 2, 3])
    np.testing.assert_array_equal(m["cum_uplink_bytes"], [7, 14, 21])
    np.testing.assert_array_equal(m["test_accuracy"][1:], [0.4, 0.9])
    assert bytes_to_target(m, 0.5) == 21 + 90


def test_missing_metrics_file_raises_naming_the_path(topk_run):
    (topk_run / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match="metrics.csv") as info:
        read_metrics(topk_run)
    assert str(topk_run / "metrics.csv") in str(info.value)
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        plot_run(topk_run)


def test_missing_run_dir_and_summary_raise(tmp_path, topk_run):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        read_metrics(tmp_path / "nope")
    (topk_run / "summary.json").unlink()
    with pytest.raises(FileNotFoundError) as info:
        read_summary(topk_run)
    assert str(topk_run / "summary.json") in str(info.value)
    with pytest.raises(FileNotFoundError, match="summary.json"):
        compare([topk_run])


def test_missing_column_raises_value_error_naming_file_and_column(tmp_path):
    run = write_run(
        tmp_path,
        "r",
        name="r",
        algorithm="a",
        accuracy=[0.5],
        up=1,
        down=1,
        dense_up=1,
        column_order=[c for c in METRICS_COLUMNS if c != "cum_downlink_bytes"],
    )
    with pytest.raises(ValueError, match="cum_downlink_bytes") as info:
        read_metrics(run)
    assert str(run / "metrics.csv") in str(info.value)


def test_bad_cell_and_empty_file_raise_value_error(tmp_path):
    run = write_run(tmp_path, "r", name="r", algorithm="a", accuracy=[0.5, 0.6], up=1, down=1, dense_up=1)
    path = run / "metrics.csv"
    path.write_text(path.read_text().replace("0.6", "abc"))
    with pytest.raises(ValueError, match=r"line 3, column 'test_accuracy'.*'abc'"):
        read_metrics(run)
    path.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        read_metrics(run)


def test_read_summary_requires_name_and_algorithm(tmp_path, topk_run):
    assert read_summary(topk_run)["uplink_bytes"] == 1_500_000
    (topk_run / "summary.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="algorithm"):
        read_summary(topk_run)
    (topk_run / "summary.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        read_summary(topk_run)


# ----------------------------------------------------------------------------- targets


def test_bytes_to_target_exact_cumulative_bytes_at_first_evaluated_round(topk_run, fedavg_run):
    m = read_metrics(topk_run)
    # 0.8 is first reached at round 4 (0.85), not round 6 (0.80): 4 * (250_000 + 1_000_000).
    assert bytes_to_target(m, 0.8) == 5_000_000
    assert bytes_to_target(m, 0.8, which="uplink") == 1_000_000
    assert bytes_to_target(m, 0.8, which="downlink") == 4_000_000
    # Equality counts; round 1 (not evaluated) never does.
    assert bytes_to_target(m, 0.5) == 2_500_000
    assert bytes_to_target(m, 0.0) == 2_500_000
    assert bytes_to_target(m, 0.86) is None
    assert bytes_to_target(read_metrics(fedavg_run), 0.8) is None
    assert bytes_to_target(read_metrics(fedavg_run), 0.7) == 3 * (1_234_567 + 2_000_000)


def test_rounds_to_target(topk_run, fedavg_run):
    m = read_metrics(topk_run)
    assert rounds_to_target(m, 0.5) == 2
    assert rounds_to_target(m, 0.51) == 4
    assert rounds_to_target(m, 0.85) == 4
    assert rounds_to_target(m, 0.9) is None
    assert rounds_to_target(read_metrics(fedavg_run), 0.3) == 1


def test_target_arguments_are_validated(topk_run):
    m = read_metrics(topk_run)
    with pytest.raises(ValueError, match="did you mean 0.8"):
        bytes_to_target(m, 80)
    with pytest.raises(ValueError, match="which"):
        bytes_to_target(m, 0.8, which="both")
    with pytest.raises(ValueError):
        rounds_to_target(m, math.nan)


# ----------------------------------------------------------------------------- comparison


def test_compare_rows_match_hand_computed_values(topk_run, fedavg_run):
    topk, fedavg = compare_rows([topk_run, fedavg_run], 0.8)
    assert topk["name"] == "mnist-topk" and topk["algorithm"] == "topk"
    assert topk["final_accuracy"] == 0.8 and topk["best_accuracy"] == 0.85
    assert topk["uplink_mb"] == 1.5
    assert topk["downlink_mb"] == 6.0
    assert topk["downlink_broadcast_mb"] == 0.6
    assert topk["uplink_compression"] == 8.0
    assert topk["mb_to_target"] == 5.0 and topk["rounds_to_target"] == 4
    assert topk["uplink_mb_to_target"] == 1.0
    assert topk["rounds"] == 6 and topk["target_accuracy"] == 0.8

    assert fedavg["final_accuracy"] == 0.75 and fedavg["best_accuracy"] == 0.75
    assert fedavg["uplink_mb"] == pytest.approx(4.938268)
    assert fedavg["downlink_mb"] == 8.0
    assert fedavg["uplink_compression"] == 1.0
    assert fedavg["mb_to_target"] is None and fedavg["rounds_to_target"] is None

    (row,) = compare_rows(topk_run)
    assert row["target_accuracy"] is None and row["mb_to_target"] is None and row["rounds_to_target"] is None


def test_compare_rows_fill_nulls_from_metrics(tmp_path):
    run = write_run(
        tmp_path,
        "r",
        name="r",
        algorithm="a",
        accuracy=[0.2, None, 0.6, 0.4],
        up=500_000,
        down=1_000_000,
        dense_up=2_000_000,
        summary_overrides={"final_accuracy": None, "best_accuracy": None, "uplink_compression": None},
    )
    (row,) = compare_rows([run])
    assert row["final_accuracy"] == 0.4 and row["best_accuracy"] == 0.6
    assert row["uplink_compression"] == 4.0


def test_compare_rows_needs_runs():
    with pytest.raises(ValueError, match="no run directories"):
        compare_rows([])


def test_compare_table_contents_and_alignment(topk_run, fedavg_run):
    table = compare([topk_run, fedavg_run], target_accuracy=0.8)
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, two runs
    header, _, topk, fedavg = lines
    assert "MB to 80%" in header and "Rounds to 80%" in header
    assert topk.startswith("mnist-topk") and fedavg.startswith("mnist-fedavg")
    assert topk.split()[1:] == ["topk", "80.00", "85.00", "1.50", "6.00", "8.0x", "5.00", "1.00", "4"]
    assert fedavg.split()[1:] == ["fedavg", "75.00", "75.00", "4.94", "8.00", "1.0x", "—", "—", "—"]
    # Numbers are right-aligned: every row ends at the same column.
    assert len(topk) == len(fedavg) == len(header)
    assert topk.index("1.50") + 4 == fedavg.index("4.94") + 4 == header.index("MB up") + len("MB up")


def test_compare_without_target_has_no_target_columns(topk_run):
    table = compare(topk_run)
    assert "MB to" not in table and "Rounds to" not in table
    assert table == text_table(compare_rows([topk_run]))
    assert "1.50" in table and "6.00" in table


def test_markdown_table(tmp_path, topk_run, fedavg_run):
    rows = compare_rows([topk_run, fedavg_run], 0.8)
    md = markdown_table(rows).splitlines()
    assert md[0] == (
        "| Run | Algorithm | Final acc. (%) | Best acc. (%) | MB up | MB down | Up compression "
        "| MB to 80% | MB up to 80% | Rounds to 80% |"
    )
    assert md[1] == "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert md[2] == "| mnist-topk | topk | 80.00 | 85.00 | 1.50 | 6.00 | 8.0x | 5.00 | 1.00 | 4 |"
    assert md[3] == "| mnist-fedavg | fedavg | 75.00 | 75.00 | 4.94 | 8.00 | 1.0x | — | — | — |"
    piped = write_run(tmp_path, "p", name="a|b", algorithm="x", accuracy=[0.5], up=1, down=1, dense_up=1)
    assert "| a\\|b | x |" in markdown_table(compare_rows([piped]))


# ----------------------------------------------------------------------------- plots


def test_plot_run_writes_pngs_into_run_dir_or_out_dir(tmp_path, topk_run):
    paths = plot_run(topk_run)
    assert [p.name for p in paths] == ["accuracy_vs_round.png", "accuracy_vs_mb.png"]
    for p in paths:
        assert p.parent == topk_run and p.stat().st_size > 1000
        png_size(p)
    out = tmp_path / "plots" / "nested"
    paths = plot_run(topk_run, out_dir=out)
    assert {p.name for p in out.iterdir()} == {"accuracy_vs_round.png", "accuracy_vs_mb.png"}
    for p in paths:
        png_size(p)


def test_plot_run_without_evaluations_or_summary(tmp_path):
    run = write_run(tmp_path, "r", name="r", algorithm="a", accuracy=[None, None], up=1, down=1, dense_up=1)
    (run / "summary.json").unlink()  # a run still in progress
    for p in plot_run(run):
        png_size(p)


def test_plot_compare_writes_one_png_with_two_side_by_side_panels(tmp_path, topk_run, fedavg_run):
    path = plot_compare([topk_run, fedavg_run], tmp_path / "figs" / "compare.png")
    assert path.exists() and path.stat().st_size > 1000
    width, height = png_size(path)
    assert width > 2 * height
