"""fedpress.report on synthetic run directories whose numbers are known by hand."""

import csv
import json
import math
import struct

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from fedpress.report import (
    METRICS_COLUMNS,
    accuracy_curves,
    bytes_to_target,
    compare,
    compare_figure,
    compare_rows,
    expand_runs,
    group_markdown_table,
    group_note,
    group_rows,
    markdown_table,
    plot_compare,
    plot_run,
    read_metrics,
    read_summary,
    rounds_to_target,
    run_figures,
    table_note,
    target_fraction,
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
    dense_down=None,
    clients=10,
    extra=None,
    column_order=None,
    summary_overrides=None,
):
    """Write metrics.csv + summary.json the way a fedpress run does.

    accuracy: per round, None where not evaluated; up/down/dense_up/dense_down: bytes per round
    (down per receiving client; the broadcast itself is down / clients; dense_down defaults to 4 * down).
    extra: {column: [cells]} of unknown columns to add.
    """
    run = root / dirname
    run.mkdir(parents=True)
    dense_down = 4 * down if dense_down is None else dense_down
    rows, cum = [], dict.fromkeys(("up", "down", "bc", "dup", "ddown"), 0)
    for r, acc in enumerate(accuracy, start=1):
        bc = down // clients
        cum["up"] += up
        cum["down"] += down
        cum["bc"] += bc
        cum["dup"] += dense_up
        cum["ddown"] += dense_down
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
            "dense_downlink_bytes": dense_down,
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
    assert str(info.value) == f"{topk_run}: no metrics.csv (not a fedpress run directory)"
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        plot_run(topk_run)


def test_missing_run_dir_and_summary_raise(tmp_path, topk_run):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        read_metrics(tmp_path / "nope")
    (topk_run / "summary.json").unlink()
    with pytest.raises(FileNotFoundError) as info:
        read_summary(topk_run)
    assert str(info.value) == f"{topk_run}: no summary.json (not a fedpress run directory)"
    with pytest.raises(FileNotFoundError, match="summary.json"):
        compare([topk_run])
    (topk_run / "config.toml").write_text('name = "x"\n')  # a run that is still going
    with pytest.raises(FileNotFoundError, match="no summary.json \\(a run that has not finished\\)"):
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
    assert topk["total_mb"] == 7.5
    assert topk["initial_downlink_mb"] is None
    assert topk["dense_uplink_mb"] == 12.0 and topk["dense_downlink_mb"] == 24.0 and topk["dense_total_mb"] == 36.0
    assert topk["uplink_compression"] == 8.0
    assert topk["downlink_compression"] == 4.0
    assert topk["total_compression"] == pytest.approx(36.0 / 7.5)
    assert topk["mb_to_target"] == 5.0 and topk["rounds_to_target"] == 4
    assert topk["uplink_mb_to_target"] == 1.0
    assert topk["downlink_mb_to_target"] == 4.0
    assert topk["total_mb_to_target"] == 5.0
    assert topk["rounds"] == 6 and topk["target_accuracy"] == 0.8
    assert topk["label"] == "mnist-topk"

    assert fedavg["final_accuracy"] == 0.75 and fedavg["best_accuracy"] == 0.75
    assert fedavg["uplink_mb"] == pytest.approx(4.938268)
    assert fedavg["downlink_mb"] == 8.0
    assert fedavg["uplink_compression"] == 1.0
    assert fedavg["mb_to_target"] is None and fedavg["rounds_to_target"] is None
    for which in ("uplink", "downlink", "total"):
        assert fedavg[f"{which}_mb_to_target"] is None

    (row,) = compare_rows(topk_run)
    assert row["target_accuracy"] is None and row["mb_to_target"] is None and row["rounds_to_target"] is None
    for which in ("uplink", "downlink", "total"):
        assert row[f"{which}_mb_to_target"] is None


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
        summary_overrides={
            "final_accuracy": None,
            "best_accuracy": None,
            "uplink_compression": None,
            "total_compression": None,
            "downlink_bytes": None,
            "dense_downlink_bytes": None,
        },
    )
    (row,) = compare_rows([run])
    assert row["final_accuracy"] == 0.4 and row["best_accuracy"] == 0.6
    assert row["uplink_compression"] == 4.0
    # 4 rounds: downlink 4 MB, dense downlink 16 MB (from metrics.csv); uplink 2 MB, dense uplink 8 MB.
    assert row["downlink_mb"] == 4.0 and row["total_mb"] == 6.0
    assert row["downlink_compression"] == 4.0
    assert row["total_compression"] == 24.0 / 6.0


def test_compare_rows_needs_runs():
    with pytest.raises(ValueError, match="no run directories"):
        compare_rows([])


def test_compare_table_contents_and_alignment(topk_run, fedavg_run):
    table = compare([topk_run, fedavg_run], target_accuracy=0.8)
    lines = table.splitlines()
    assert len(lines) == 6  # header, rule, two runs, blank, note
    header, _, topk, fedavg, blank, note = lines
    assert blank == "" and note == table_note(compare_rows([topk_run], 0.8))
    assert "total MB to 80%" in header and "Rounds to 80%" in header
    assert topk.startswith("mnist-topk") and fedavg.startswith("mnist-fedavg")
    assert topk.split()[1:] == [
        "topk", "80.00", "85.00", "1.50", "6.00", "7.50", "8.0x", "4.0x", "4.8x", "1.00", "4.00", "5.00", "4",
    ]  # fmt: skip
    # fedavg: total x = (4.938268 + 32) / (4.938268 + 8) = 2.85
    assert fedavg.split()[1:] == [
        "fedavg", "75.00", "75.00", "4.94", "8.00", "12.94", "1.0x", "4.0x", "2.9x", "—", "—", "—", "—",
    ]  # fmt: skip
    # Numbers are right-aligned: every row ends at the same column.
    assert len(topk) == len(fedavg) == len(header)
    assert topk.index("1.50") + 4 == fedavg.index("4.94") + 4 == header.index("up MB") + len("up MB")
    assert topk.index("7.50") + 4 == fedavg.index("12.94") + 5 == header.index("total MB") + len("total MB")


def test_compare_without_target_has_no_target_columns(topk_run):
    table = compare(topk_run)
    assert "MB to" not in table and "Rounds to" not in table and '"to ' not in table
    assert table == text_table(compare_rows([topk_run]))
    assert "1.50" in table and "6.00" in table


def test_markdown_table(tmp_path, topk_run, fedavg_run):
    rows = compare_rows([topk_run, fedavg_run], 0.8)
    md = markdown_table(rows).splitlines()
    assert md[0] == (
        "| Run | Algorithm | Final acc. (%) | Best acc. (%) | up MB | down MB | total MB | up x | down x | total x "
        "| up MB to 80% | down MB to 80% | total MB to 80% | Rounds to 80% |"
    )
    assert md[1] == "|:---|:---|" + "---:|" * 12
    assert md[2] == (
        "| mnist-topk | topk | 80.00 | 85.00 | 1.50 | 6.00 | 7.50 | 8.0x | 4.0x | 4.8x | 1.00 | 4.00 | 5.00 | 4 |"
    )
    assert md[3] == (
        "| mnist-fedavg | fedavg | 75.00 | 75.00 | 4.94 | 8.00 | 12.94 | 1.0x | 4.0x | 2.9x | — | — | — | — |"
    )
    # The note is separated by a blank line, so that markdown does not read it as a table row.
    assert md[4] == "" and md[5] == table_note(rows) and "|" not in md[5]
    piped = write_run(tmp_path, "p", name="a|b", algorithm="x", accuracy=[0.5], up=1, down=1, dense_up=1)
    assert "| a\\|b | x |" in markdown_table(compare_rows([piped]))


# ------------------------------------------------ uplink, downlink and total shown apart


@pytest.fixture
def sparse_and_dense(tmp_path):
    """Two runs with the same dense downlink (1 MB per round, fp32) and 100x less uplink in the first.

    sparse: uplink 10_000 B a round (dense 1_000_000), accuracy [-, 0.5, 0.7, 0.9, 0.85]: reaches 0.8
    first at round 4 (0.9; round 5's 0.85 is later). dense: everything fp32, accuracy
    [0.6, 0.8, -, 0.95, 0.7]: reaches 0.8 at round 2 (equality counts).
    """
    sparse = write_run(
        tmp_path,
        "sparse",
        name="mnist-topk1",
        algorithm="topk",
        accuracy=[None, 0.5, 0.7, 0.9, 0.85],
        up=10_000,
        dense_up=1_000_000,
        down=1_000_000,
        dense_down=1_000_000,
    )
    dense = write_run(
        tmp_path,
        "dense",
        name="mnist-fedavg",
        algorithm="fedavg",
        accuracy=[0.6, 0.8, None, 0.95, 0.7],
        up=1_000_000,
        dense_up=1_000_000,
        down=1_000_000,
        dense_down=1_000_000,
    )
    return sparse, dense


def markdown_cells(md):
    """{header: [cell per run]} of a markdown_table, and the lines after the table."""
    lines = md.splitlines()
    split = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines if line.startswith("|")]
    header, _, *rows = split
    columns = {h: [row[i] for row in rows] for i, h in enumerate(header)}
    return columns, lines[len(split) :]


def test_uplink_gain_is_reported_apart_from_an_equal_dense_downlink(sparse_and_dense):
    sparse, dense = compare_rows(sparse_and_dense, 0.8)
    assert dense["uplink_mb"] / sparse["uplink_mb"] == pytest.approx(100.0)
    assert sparse["uplink_mb"] == pytest.approx(0.05) and dense["uplink_mb"] == 5.0
    assert sparse["downlink_mb"] == dense["downlink_mb"] == 5.0
    for row in (sparse, dense):
        assert row["total_mb"] == pytest.approx(row["uplink_mb"] + row["downlink_mb"])
    # Reduction factors against dense fp32 in each view: the total hides most of the 100x.
    assert sparse["uplink_compression"] == pytest.approx(100.0)
    assert sparse["downlink_compression"] == dense["downlink_compression"] == 1.0
    assert sparse["total_compression"] == pytest.approx(10.0 / 5.05)
    assert dense["uplink_compression"] == dense["total_compression"] == 1.0


def test_to_target_columns_pick_the_first_evaluated_round_reaching_the_target(sparse_and_dense):
    sparse, dense = compare_rows(sparse_and_dense, 0.8)
    # sparse: round 4 (0.9), not round 5 (0.85, also >= 0.8).
    assert sparse["rounds_to_target"] == 4
    assert sparse["uplink_mb_to_target"] == pytest.approx(0.04)
    assert sparse["downlink_mb_to_target"] == 4.0
    assert sparse["total_mb_to_target"] == pytest.approx(4.04) == sparse["mb_to_target"]
    # dense: round 2 (exactly 0.8), not round 4 (0.95).
    assert dense["rounds_to_target"] == 2
    assert dense["uplink_mb_to_target"] == dense["downlink_mb_to_target"] == 2.0
    assert dense["total_mb_to_target"] == dense["mb_to_target"] == 4.0
    # Unevaluated rounds never count: 0.7 is first reached at round 3 by sparse, at round 4 (0.95) by dense.
    sparse, dense = compare_rows(sparse_and_dense, 0.7)
    assert sparse["rounds_to_target"] == 3 and sparse["downlink_mb_to_target"] == 3.0
    assert dense["rounds_to_target"] == 2  # 0.8 at round 2 already
    sparse, dense = compare_rows(sparse_and_dense, 0.9)
    assert dense["rounds_to_target"] == 4 and dense["uplink_mb_to_target"] == 4.0


def test_table_columns_name_each_view_and_the_note_says_what_is_counted(sparse_and_dense):
    rows = compare_rows(sparse_and_dense, 0.8)
    columns, after = markdown_cells(markdown_table(rows))
    assert list(columns) == [
        "Run", "Algorithm", "Final acc. (%)", "Best acc. (%)",
        "up MB", "down MB", "total MB", "up x", "down x", "total x",
        "up MB to 80%", "down MB to 80%", "total MB to 80%", "Rounds to 80%",
    ]  # fmt: skip
    assert columns["Run"] == ["mnist-topk1", "mnist-fedavg"]
    up, down, total = ([float(c) for c in columns[h]] for h in ("up MB", "down MB", "total MB"))
    assert up[1] / up[0] == pytest.approx(100.0)
    assert down[0] == down[1] == 5.0
    assert total == pytest.approx([u + d for u, d in zip(up, down, strict=True)])
    assert columns["up x"] == ["100.0x", "1.0x"]
    assert columns["down x"] == ["1.0x", "1.0x"]
    assert columns["total x"] == ["2.0x", "1.0x"]
    # Small MB keep significant digits rather than reading 0.00.
    assert columns["up MB"] == ["0.05", "5.00"]
    assert columns["up MB to 80%"] == ["0.04", "2.00"]
    assert columns["down MB to 80%"] == ["4.00", "2.00"]
    assert columns["total MB to 80%"] == ["4.04", "4.00"]
    assert columns["Rounds to 80%"] == ["4", "2"]

    assert after[0] == "" and len(after) == 2
    note = after[1]
    assert "once per receiving client" in note and "first downloads included" in note
    assert "1 MB = 10^6 bytes" in note and "total = up + down" in note
    assert "first evaluated round" in note
    text = text_table(rows).splitlines()
    assert text[-1] == note and text[-2] == ""
    for header in columns:
        assert header in text[0]


def test_factor_and_first_download_columns_only_where_known(tmp_path, sparse_and_dense):
    sparse, _ = sparse_and_dense
    joined = write_run(
        tmp_path,
        "joined",
        name="async",
        algorithm="qafel",
        accuracy=[0.5],
        up=100,
        down=1_000,
        dense_up=400,
        summary_overrides={"initial_downlink_bytes": 600},
    )
    rows = compare_rows([sparse, joined])
    assert rows[0]["initial_downlink_mb"] is None and rows[1]["initial_downlink_mb"] == pytest.approx(0.0006)
    columns, after = markdown_cells(markdown_table(rows))
    assert columns["first-download MB"] == ["—", "0.0006"]
    assert list(columns).index("first-download MB") == list(columns).index("down MB") + 1
    assert "first-download MB" in after[1]
    # No dense bytes anywhere: no reduction columns rather than a column of dashes.
    unknown = [dict(r, uplink_compression=None, downlink_compression=None, total_compression=None) for r in rows]
    columns, _ = markdown_cells(markdown_table(unknown))
    assert not any(h.endswith(" x") for h in columns)
    assert "first-download MB" not in markdown_cells(markdown_table(compare_rows([sparse])))[0]


def test_runs_sharing_a_name_are_told_apart_by_directory(tmp_path):
    runs = [
        write_run(tmp_path / setting, "topk", name="mnist", algorithm="topk", accuracy=[0.5], up=1, down=1, dense_up=1)
        for setting in ("alpha0.1", "alpha1.0")
    ]
    other = write_run(tmp_path, "fedavg", name="fedavg", algorithm="fedavg", accuracy=[0.5], up=1, down=1, dense_up=1)
    rows = compare_rows([*runs, other])
    assert [r["label"] for r in rows] == ["mnist [alpha0.1/topk]", "mnist [alpha1.0/topk]", "fedavg"]
    assert [r["name"] for r in rows] == ["mnist", "mnist", "fedavg"]
    assert markdown_cells(markdown_table(rows))[0]["Run"] == [r["label"] for r in rows]


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


def test_plot_compare_writes_one_png_of_the_compare_figure(tmp_path, topk_run, fedavg_run):
    path = plot_compare([topk_run, fedavg_run], tmp_path / "figs" / "compare.png")
    assert path.exists() and path.stat().st_size > 1000
    width, height = compare_figure([topk_run, fedavg_run]).get_size_inches() * 120
    assert png_size(path) == (round(width), round(height))
    with pytest.raises(ValueError, match="no run directories"):
        plot_compare([], tmp_path / "empty.png")


def test_accuracy_curves_feed_the_panels(sparse_and_dense):
    sparse, dense = sparse_and_dense
    curves = accuracy_curves(read_metrics(sparse))
    np.testing.assert_array_equal(curves["round"], [2, 3, 4, 5])
    np.testing.assert_allclose(curves["accuracy"], [50, 70, 90, 85])
    np.testing.assert_allclose(curves["uplink_mb"], [0.02, 0.03, 0.04, 0.05])
    np.testing.assert_allclose(curves["downlink_mb"], [2, 3, 4, 5])
    np.testing.assert_allclose(curves["total_mb"], curves["uplink_mb"] + curves["downlink_mb"])
    dense_up = accuracy_curves(read_metrics(dense))["uplink_mb"]
    np.testing.assert_allclose(dense_up, [1, 2, 4, 5])


def test_compare_figure_has_round_uplink_downlink_and_total_panels(tmp_path, sparse_and_dense):
    fig = compare_figure(sparse_and_dense)
    assert len(fig.axes) == 4
    ax_round, ax_up, ax_down, ax_total = fig.axes
    assert ax_round.get_xlabel() == "Round" and ax_round.get_xscale() == "linear"
    for ax, word in ((ax_up, "uplink"), (ax_down, "downlink"), (ax_total, "uplink + downlink")):
        label = ax.get_xlabel()
        assert ax.get_xscale() == "log"
        assert word in label and "all clients" in label and "10⁶ bytes" in label
        assert "per client" not in label  # a sum over clients, not a per-client figure
        assert ax.get_ylabel() == "Test accuracy (%)"
    assert "per receiving client" in ax_down.get_xlabel() and "per receiving client" in ax_total.get_xlabel()
    # One curve per run in every panel, with the same colour everywhere; x data are the byte views in MB.
    for ax in fig.axes:
        assert len(ax.get_lines()) == 2
        assert [line.get_color() for line in ax.get_lines()] == ["C0", "C1"]
    np.testing.assert_allclose(ax_up.get_lines()[0].get_xdata(), [0.02, 0.03, 0.04, 0.05])
    np.testing.assert_allclose(ax_up.get_lines()[1].get_xdata(), [1, 2, 4, 5])
    np.testing.assert_allclose(ax_down.get_lines()[0].get_xdata(), [2, 3, 4, 5])
    np.testing.assert_allclose(ax_down.get_lines()[1].get_xdata(), [1, 2, 4, 5])  # same downlink, other rounds
    np.testing.assert_allclose(ax_total.get_lines()[0].get_xdata(), [2.02, 3.03, 4.04, 5.05])
    np.testing.assert_allclose(ax_total.get_lines()[1].get_ydata(), [60, 80, 95, 70])
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["mnist-topk1 (topk)", "mnist-fedavg (fedavg)"]

    path = plot_compare(sparse_and_dense, tmp_path / "compare.png")
    assert path.stat().st_size > 1000
    png_size(path)


def test_compare_figure_legend_tells_same_named_runs_apart_by_directory(tmp_path):
    runs = [
        write_run(tmp_path, d, name="mnist", algorithm="topk", accuracy=[0.5, 0.6], up=1, down=1, dense_up=1)
        for d in ("seed0", "seed1")
    ]
    (legend,) = compare_figure(runs).legends
    assert [t.get_text() for t in legend.get_texts()] == ["mnist (topk) [seed0]", "mnist (topk) [seed1]"]


def test_run_figures_bytes_figure_has_uplink_downlink_and_total_panels(topk_run):
    round_fig, mb_fig = run_figures(topk_run)
    assert len(round_fig.axes) == 1
    assert len(mb_fig.axes) == 3
    up, down, total = mb_fig.axes
    assert "uplink" in up.get_xlabel() and "downlink" in down.get_xlabel() and "uplink + downlink" in total.get_xlabel()
    for ax in mb_fig.axes:
        assert ax.get_xscale() == "log" and "per client" not in ax.get_xlabel()
    np.testing.assert_allclose(up.get_lines()[0].get_xdata(), [0.5, 1.0, 1.5])
    np.testing.assert_allclose(down.get_lines()[0].get_xdata(), [2.0, 4.0, 6.0])
    np.testing.assert_allclose(total.get_lines()[0].get_xdata(), [2.5, 5.0, 7.5])


# ----------------------------------------------------------------------------- groups of seeds


def write_seed(root, group, seed, *, lr=0.1, name=None, async_=False, **run):
    """A run of `write_run` at root/group/seed<seed> with a config.toml (the seed, the name and
    the learning rate that makes the group), as `fedpress run` writes one."""
    name = name or group
    path = write_run(root / group, f"seed{seed}", name=name, **run)
    text = f'name = "{name}"\nseed = {seed}\nrounds = {len(run["accuracy"])}\nexecutor = "sequential"\n'
    text += f"\n[train]\nlr = {lr}\n"
    if async_:
        text += '\n[async]\nconcurrency = 4\neval_train = true\n'
    (path / "config.toml").write_text(text)
    return path


@pytest.fixture
def seeds(tmp_path):
    """Group "a": three seeds (lr 0.1); group "b": two seeds (lr 0.2); "c": one run (lr 0.3).
    Target 0.8: a's seeds reach it at rounds 2, 3, 2; b's seed 1 never does."""
    a = [
        write_seed(tmp_path, "a", 0, algorithm="topk", accuracy=[0.5, 0.8, 0.85], up=200_000, down=1_000_000,
                   dense_up=2_000_000),
        write_seed(tmp_path, "a", 1, algorithm="topk", accuracy=[0.4, 0.7, 0.9], up=300_000, down=1_000_000,
                   dense_up=2_000_000),
        write_seed(tmp_path, "a", 2, algorithm="topk", accuracy=[0.6, 0.82, 0.84], up=250_000, down=1_200_000,
                   dense_up=2_000_000),
    ]
    b = [
        write_seed(tmp_path, "b", 0, lr=0.2, algorithm="fedavg", accuracy=[0.7, 0.81, 0.83], up=2_000_000,
                   down=2_000_000, dense_up=2_000_000),
        write_seed(tmp_path, "b", 1, lr=0.2, algorithm="fedavg", accuracy=[0.6, 0.7, 0.75], up=2_100_000,
                   down=2_000_000, dense_up=2_000_000),
    ]
    c = [write_seed(tmp_path, "c", 5, lr=0.3, algorithm="fedavg", accuracy=[0.5, 0.9, 0.95], up=1_000_000,
                    down=1_000_000, dense_up=1_000_000)]
    return a, b, c


def cells_of(table):
    """{header: [cell per row]} of a plain-text table: columns split at the header's words,
    right-aligned cells ending where their header ends."""
    lines = table.splitlines()
    header, rule, *rows = lines[: lines.index("")]
    spans, at = [], 0
    for dashes in rule.split("  "):
        spans.append((at, at + len(dashes)))
        at += len(dashes) + 2
    names = [header[s:e].strip() for s, e in spans]
    return {n: [row[s:e].strip() for row in rows] for n, (s, e) in zip(names, spans, strict=True)}


def test_group_rows_mean_and_std_are_numpys_over_the_seeds(seeds):
    a, b, c = seeds
    groups = group_rows([*a, *b, *c], 0.8)
    assert [g["label"] for g in groups] == ["a", "b", "c"]
    assert [g["runs"] for g in groups] == [3, 2, 1]
    assert groups[0]["seeds"] == [0, 1, 2] and groups[2]["seeds"] == [5]
    rows = {g["label"]: compare_rows(g["run_dirs"], 0.8) for g in groups}
    for group in groups[:1]:
        for key in ("final_accuracy", "uplink_mb", "downlink_mb", "total_mb", "total_mb_to_target",
                    "uplink_mb_to_target", "rounds_to_target"):
            values = np.array([r[key] for r in rows[group["label"]]], dtype=float)
            stat = group[key]
            assert stat.count == stat.runs == 3
            assert stat.mean == pytest.approx(np.mean(values), rel=1e-12)
            assert stat.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    # a: final accuracy 85, 90, 84 %; uplink 0.6, 0.9, 0.75 MB; rounds to 80%: 2, 3, 2
    table = compare([*a, *b, *c], 0.8)
    cells = cells_of(table)
    assert cells["Run"] == ["a", "b", "c"] and cells["Seeds"] == ["3", "2", "1"]
    acc = 100 * np.array([0.85, 0.9, 0.84])
    assert cells["Final acc. (%)"][0] == f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f}"
    up = np.array([0.6, 0.9, 0.75])
    assert cells["up MB"][0] == f"{up.mean():.2f} ± {up.std(ddof=1):.2f}"
    total = np.array([0.6 + 3.0, 0.9 + 3.0, 0.75 + 3.6])
    assert cells["total MB"][0] == f"{total.mean():.2f} ± {total.std(ddof=1):.2f}"
    rounds = np.array([2, 3, 2])
    assert cells["Rounds to 80%"][0] == f"{rounds.mean():.1f} ± {rounds.std(ddof=1):.1f}"
    # a group of one seed shows its value, as the per-run table does
    assert cells["Final acc. (%)"][2] == "95.00" and cells["Rounds to 80%"][2] == "2"
    assert "mean ± sample standard deviation" in table.splitlines()[-1]


def test_a_seed_that_misses_the_target_is_counted_apart_never_averaged_in(seeds):
    _, b, _ = seeds
    (group,) = group_rows(b, 0.8)
    stat = group["total_mb_to_target"]
    assert stat.values == (8.0, None)  # seed 0: 0.81 at round 2 (2 x 4 MB); seed 1 never
    assert (stat.count, stat.runs, stat.mean, stat.std) == (1, 2, 8.0, None)
    cells = cells_of(compare(b, 0.8))
    assert cells["total MB to 80%"] == ["8.00 (1 of 2)"]
    assert cells["Rounds to 80%"] == ["2 (1 of 2)"]
    assert cells["Final acc. (%)"] == [f"{79.0:.2f} ± {np.std([83.0, 75.0], ddof=1):.2f}"]
    a, b, c = seeds
    cells = cells_of(compare([*a, b[1]], 0.9))
    # a: only seed 1 reaches 90% (round 3); b's seed 1 never does: a cell without a value is a dash
    assert cells["Rounds to 90%"] == ["3 (1 of 3)", "—"]
    assert cells["up MB to 90%"] == ["0.90 (1 of 3)", "—"]


def test_compare_prints_the_per_run_table_unless_a_group_has_several_seeds(seeds):
    a, b, c = seeds
    singles = [a[0], b[0], c[0]]  # different learning rates: three groups of one
    assert compare(singles, 0.8) == text_table(compare_rows(singles, 0.8))
    assert "Seeds" in compare([a[0], a[1], c[0]])
    # the execution keys and the name do not make another group; any other key does
    config = a[1] / "config.toml"
    config.write_text(config.read_text().replace('"sequential"', '"vmap"').replace('name = "a"', 'name = "a1"'))
    summary = json.loads((a[1] / "summary.json").read_text())
    (a[1] / "summary.json").write_text(json.dumps({**summary, "name": "a1"}))
    (group, _) = group_rows([a[0], a[1], c[0]])
    assert group["runs"] == 2 and group["name"] == "a, a1"
    config.write_text(config.read_text().replace("rounds = 3", "rounds = 4"))
    assert [g["runs"] for g in group_rows([a[0], a[1], c[0]])] == [1, 1, 1]


def test_groups_sharing_a_name_are_told_apart_by_their_directory(tmp_path):
    runs = [write_seed(tmp_path / f"lr{lr}", "mnist", s, lr=lr, algorithm="topk", accuracy=[0.5], up=1, down=1,
                       dense_up=1) for lr in (0.1, 0.2) for s in (0, 1)]
    assert [g["label"] for g in group_rows(runs)] == ["mnist [lr0.1/mnist]", "mnist [lr0.2/mnist]"]
    md = group_markdown_table(group_rows(runs)).splitlines()
    assert md[0].startswith("| Run | Algorithm | Seeds | Final acc. (%) |")
    assert md[2].startswith("| mnist [lr0.1/mnist] | topk | 2 | 50.00 ± 0.00 |")
    assert md[-2] == "" and md[-1] == group_note(group_rows(runs))


def test_compare_figure_draws_a_mean_line_and_a_std_band_per_group(seeds):
    a, b, c = seeds
    # a's seed 2 is not evaluated at round 1: the group's curve is drawn at rounds 2 and 3 only
    path = a[2] / "metrics.csv"
    lines = path.read_text().splitlines()
    header = lines[1].split(",")
    header[METRICS_COLUMNS.index("test_accuracy")] = ""
    path.write_text("\n".join([lines[0], ",".join(header), *lines[2:]]) + "\n")

    fig = compare_figure([*a, *b, *c])
    ax_round, ax_up, ax_down, ax_total = fig.axes
    for ax in fig.axes:
        bands = [coll for coll in ax.collections if isinstance(coll, PolyCollection)]
        assert len(bands) == 2  # a and b; c is one run: a line without a band
        assert len(ax.get_lines()) == 3
    acc = 100 * np.array([[0.8, 0.85], [0.7, 0.9], [0.82, 0.84]])
    line = ax_round.get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), [2, 3])
    np.testing.assert_allclose(line.get_ydata(), acc.mean(axis=0))
    band = ax_round.collections[0].get_paths()[0].vertices
    low, high = acc.mean(axis=0) - acc.std(axis=0, ddof=1), acc.mean(axis=0) + acc.std(axis=0, ddof=1)
    assert band[:, 1].min() == pytest.approx(low.min()) and band[:, 1].max() == pytest.approx(high.max())
    # against bytes: the mean cumulative uplink of the seeds at rounds 2 and 3
    up = np.array([[0.4, 0.6], [0.6, 0.9], [0.5, 0.75]])
    np.testing.assert_allclose(ax_up.get_lines()[0].get_xdata(), up.mean(axis=0))
    np.testing.assert_allclose(ax_up.get_lines()[0].get_ydata(), acc.mean(axis=0))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "a (topk), mean ± std of 3 seeds", "b (fedavg), mean ± std of 2 seeds", "c (fedavg)",
    ]


# ----------------------------------------------------------------------------- objective runs


@pytest.fixture
def objective_run(tmp_path):
    """An asynchronous logistic regression without a test split: no accuracy (null in summary.json),
    the training objective at steps 2 and 4."""
    return write_seed(
        tmp_path, "qafel", 0, algorithm="qafel", async_=True, accuracy=[None] * 4, up=100, down=1_000,
        dense_up=400, extra={"train_objective": ["", 0.5, "", 0.25], "virtual_time": [1, 2, 3, 4]},
        summary_overrides={"final_accuracy": None, "best_accuracy": None, "final_train_objective": 0.25,
                           "asynchronous": True, "mean_staleness": None},
    )


def test_runs_without_accuracy_compare_with_dashes_and_their_objective(objective_run, topk_run):
    m = read_metrics(objective_run)
    np.testing.assert_array_equal(m["train_objective"][[1, 3]], [0.5, 0.25])
    assert "train_objective" not in read_metrics(topk_run)
    topk, qafel = compare_rows([topk_run, objective_run], 0.8)
    assert qafel["final_accuracy"] is None and qafel["best_accuracy"] is None and qafel["rounds_to_target"] is None
    assert qafel["final_objective"] == 0.25 and topk["final_objective"] is None
    columns, after = markdown_cells(markdown_table([topk, qafel]))
    assert columns["Final acc. (%)"] == ["80.00", "—"] and columns["Best acc. (%)"] == ["85.00", "—"]
    assert columns["Final objective"] == ["—", "0.25"]
    assert columns["Rounds to 80%"] == ["4", "—"]
    assert "training objective" in after[1]


def test_objective_is_plotted_log_scale_against_server_steps_and_mb(objective_run):
    round_fig, mb_fig = run_figures(objective_run)
    (ax,) = round_fig.axes
    assert ax.get_xlabel() == "Server step" and ax.get_yscale() == "log"
    assert "objective" in ax.get_ylabel()
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [2, 4])
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [0.5, 0.25])
    up, down, total = mb_fig.axes
    assert up.get_yscale() == "log" and up.get_xscale() == "log"
    np.testing.assert_allclose(up.get_lines()[0].get_xdata(), [0.0002, 0.0004])
    # with f*: the suboptimality f − f*, from the call or else from the summary
    (ax,) = run_figures(objective_run, f_star=0.2)[0].axes
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.3, 0.05])
    assert "f*" in ax.get_ylabel()
    summary = json.loads((objective_run / "summary.json").read_text())
    (objective_run / "summary.json").write_text(json.dumps({**summary, "f_star": 0.24}))
    fig = compare_figure([objective_run])
    assert len(fig.axes) == 4  # only the objective: there is no accuracy to draw
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [0.26, 0.01])
    for p in plot_run(objective_run):
        png_size(p)


def test_a_run_with_accuracy_and_objective_gets_both_blocks(tmp_path, objective_run, topk_run):
    fig = compare_figure([topk_run, objective_run])
    assert len(fig.axes) == 8
    assert fig.axes[0].get_ylabel() == "Test accuracy (%)" and "objective" in fig.axes[4].get_ylabel()
    assert fig.axes[0].get_xlabel() == "Round or server step"
    # each block draws the runs that have its quantity, in the run's colour
    assert [line.get_color() for line in fig.axes[0].get_lines()] == ["C0"]
    assert [line.get_color() for line in fig.axes[4].get_lines()] == ["C1"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["mnist-topk (topk)", "qafel (qafel)"]
    round_fig, mb_fig = run_figures(write_run(
        tmp_path, "both", name="b", algorithm="fedbuff", accuracy=[0.5, 0.6], up=1, down=1, dense_up=1,
        extra={"train_objective": [0.7, 0.6]}))
    assert len(round_fig.axes) == 2 and len(mb_fig.axes) == 6


# ----------------------------------------------------------------------------- errors and sweeps


def test_a_path_that_is_not_a_run_is_a_one_line_error_of_the_command(tmp_path, capsys, topk_run):
    from fedpress.cli import main
    from fedpress.errors import RunDirectoryError
    from fedpress.report import NotARunError

    missing = tmp_path / "runs" / "x"
    with pytest.raises(NotARunError) as info:
        compare([topk_run, missing])
    assert isinstance(info.value, RunDirectoryError) and isinstance(info.value, FileNotFoundError)
    assert str(info.value) == f"{missing}: no such directory (not a fedpress run directory)"
    assert main(["compare", str(topk_run), str(missing)]) == 2
    assert capsys.readouterr().err == f"fedpress: {missing}: no such directory (not a fedpress run directory)\n"
    missing.mkdir(parents=True)
    assert main(["compare", str(missing)]) == 2
    assert capsys.readouterr().err == f"fedpress: {missing}: no metrics.csv (not a fedpress run directory)\n"
    (topk_run / "summary.json").write_text("{")
    assert main(["compare", str(topk_run)]) == 2
    assert "summary.json: invalid JSON" in capsys.readouterr().err


def test_a_sweep_directory_stands_for_its_finished_runs(tmp_path, seeds):
    a, b, _ = seeds
    root = tmp_path / "a"
    (a[2] / "summary.json").unlink()  # still running
    runs = [{"dir": f"seed{s}", "seed": s} for s in (0, 1, 2)]
    (root / "sweep.json").write_text(json.dumps({"config": "x.toml", "overrides": [], "grid": {}, "seeds": [0, 1, 2],
                                                 "runs": runs}))
    assert expand_runs([root, b[0]]) == [a[0], a[1], b[0]]
    assert compare(root) == compare(a[:2])
    with pytest.raises(FileNotFoundError, match="a sweep directory"):
        read_summary(root)


def test_target_fraction_is_an_argparse_type():
    import argparse

    assert target_fraction("0.97") == 0.97
    with pytest.raises(argparse.ArgumentTypeError, match="did you mean 0.97"):
        target_fraction("97")
    with pytest.raises(argparse.ArgumentTypeError, match="fraction"):
        target_fraction("high")


def test_compare_command_hands_f_star_to_the_plot(objective_run, tmp_path, monkeypatch, capsys):
    from fedpress import cli, report

    seen = {}
    monkeypatch.setattr(report, "plot_compare", lambda runs, path, f_star=None: seen.update(f_star=f_star))
    assert cli.main(["compare", str(objective_run), "--f-star", "0.2", "--plot", str(tmp_path / "c.png")]) == 0
    assert seen == {"f_star": 0.2}
