"""What a run writes while it runs and what it leaves at the end (docs/outputs.md): metrics.csv
row by row, the one-line log, TensorBoard, model.safetensors, strict summary.json and
ledger.csv's rounds."""

import csv
import json
import math

import pytest

from fedpress.sim import asynchronous, run
from tests.sim.conftest import tiny_config
from tests.sim.test_async import async_config, binary_dataset
from tests.sim.test_run import rows


class Killed(Exception):
    pass


def late_column(row):
    """A column that appears from round 4 on: metrics.csv's header widens mid-run."""
    if row["round"] >= 4:
        row["late"] = row["round"] / 8


def kill_at(round_, also=late_column):
    def callback(row):
        also(row)
        if row["round"] == round_:
            raise Killed  # after the row is made, before its checkpoint and its metrics.csv line

    return callback


# ---------------------------------------------------------------------------- metrics.csv, live


def test_a_killed_run_keeps_every_evaluated_row_and_resumes_to_the_same_files(synthetic, tmp_path):
    # checkpoints after rounds 3 and 6; rounds 2, 4, 6 evaluated; killed after round 5
    cfg = tiny_config(**{"algorithm.name": "topk_ef", "algorithm.ratio": 0.05, "checkpoint_every": 3})
    full = run(cfg, tmp_path / "full", progress=False, on_round_end=late_column)
    with pytest.raises(Killed):
        run(cfg, tmp_path / "killed", progress=False, on_round_end=kill_at(5))
    kept = rows(tmp_path / "killed" / "metrics.csv")
    assert [r["round"] for r in kept] == ["1", "2", "3", "4"]  # round 4: evaluated after the checkpoint of 3
    assert kept == rows(tmp_path / "full" / "metrics.csv")[:4]  # the header widened for `late`

    seen = []

    def on_resume(row):  # the resumed run starts from the checkpoint of round 3: metrics.csv holds its rows
        seen.append([r["round"] for r in rows(tmp_path / "killed" / "metrics.csv")])
        late_column(row)

    resumed = run(cfg, tmp_path / "killed", progress=False, resume=True, on_round_end=on_resume)
    assert seen[0] == ["1", "2", "3"]
    assert rows(tmp_path / "killed" / "metrics.csv") == rows(tmp_path / "full" / "metrics.csv")
    for name in ("ledger.csv", "density.csv", "model.safetensors"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    assert {k: v for k, v in resumed.items() if k != "wall_seconds"} == \
        {k: v for k, v in full.items() if k != "wall_seconds"}
    assert not list((tmp_path / "killed").glob("*.tmp"))


def test_without_checkpoints_the_evaluated_rows_are_still_kept(synthetic, tmp_path):
    with pytest.raises(Killed):
        run(tiny_config(checkpoint_every=0), tmp_path, progress=False, on_round_end=kill_at(5, also=lambda r: None))
    assert [r["round"] for r in rows(tmp_path / "metrics.csv")] == ["1", "2", "3", "4"]
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_killed_asynchronous_run_keeps_its_evaluated_steps(synthetic, tmp_path):
    cfg = async_config(checkpoint_every=3)
    asynchronous.run(cfg, tmp_path / "full", progress=False)
    with pytest.raises(Killed):
        asynchronous.run(cfg, tmp_path / "killed", progress=False, on_round_end=kill_at(5, also=lambda r: None))
    assert rows(tmp_path / "killed" / "metrics.csv") == rows(tmp_path / "full" / "metrics.csv")[:4]
    asynchronous.run(cfg, tmp_path / "killed", progress=False, resume=True)
    assert rows(tmp_path / "killed" / "metrics.csv") == rows(tmp_path / "full" / "metrics.csv")


# ---------------------------------------------------------------------------- the log without a terminal


def test_without_a_terminal_each_row_is_one_plain_line(synthetic, tmp_path, capsys):
    run(tiny_config(rounds=4), tmp_path / "sync", progress=True)
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("tiny ")]
    assert [line.split(":")[0] for line in lines] == [f"tiny round {t}/4" for t in range(1, 5)]
    assert ["acc " in line for line in lines] == [False, True, False, True]
    assert all(" MB down " in line and line.endswith(" s") for line in lines)
    assert "\r" not in out and "\r" not in err

    asynchronous.run(async_config(rounds=2), tmp_path / "async", progress=True)
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == ["tiny_async step 1/2", "tiny_async step 2/2"]
    assert " uploads " in out and "\r" not in out and "\r" not in err


# ---------------------------------------------------------------------------- TensorBoard


def read_scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_the_rows_scalars_and_a_resumed_run_rewrites_its_own(synthetic, tmp_path):
    pytest.importorskip("tensorboard")
    from fedpress.runtime.outputs import TensorBoard

    cfg = tiny_config(**{"algorithm.name": "topk_ef", "algorithm.ratio": 0.05})
    with TensorBoard(tmp_path / "tensorboard") as board, pytest.raises(Killed):
        run(cfg, tmp_path, progress=False, on_round_end=kill_at(5, also=board))
    with TensorBoard(tmp_path / "tensorboard") as board:
        run(cfg, tmp_path, progress=False, resume=True, on_round_end=board)

    scalars = read_scalars(tmp_path / "tensorboard")
    with open(tmp_path / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    expected = {"test_accuracy", "test_loss", "train_loss", "cum_uplink_bytes", "cum_downlink_bytes",
                "cum_total_bytes"}
    assert set(scalars) == expected
    for tag in expected - {"cum_total_bytes"}:
        want = [(int(r["round"]), float(r[tag])) for r in table if r[tag] != ""]
        assert [step for step, _ in scalars[tag]] == [step for step, _ in want], tag  # round 5 once
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in want], rel=1e-5), tag
    total = [int(r["cum_uplink_bytes"]) + int(r["cum_downlink_bytes"]) for r in table]
    assert [v for _, v in scalars["cum_total_bytes"]] == pytest.approx(total, rel=1e-6)


def test_tensorboard_writes_the_asynchronous_columns_too(synthetic, tmp_path):
    pytest.importorskip("tensorboard")
    from fedpress.runtime.outputs import TensorBoard

    with TensorBoard(tmp_path / "tensorboard") as board:
        asynchronous.run(async_config(rounds=2), tmp_path, progress=False, on_round_end=board)
    scalars = read_scalars(tmp_path / "tensorboard")
    assert {"virtual_time", "uploads", "staleness_mean", "cum_initial_downlink_bytes"} <= set(scalars)
    assert [step for step, _ in scalars["uploads"]] == [1, 2]


# ---------------------------------------------------------------------------- model.safetensors


def test_model_safetensors_is_the_final_model(synthetic, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fedpress import __version__
    from fedpress.local import FlatModel, evaluate
    from fedpress.models import build_model

    cfg = tiny_config(rounds=3)
    summary = run(cfg, tmp_path, progress=False)
    module = build_model(cfg.model.name, synthetic.input_shape, synthetic.num_classes, **cfg.model.options)
    tensors = load_file(tmp_path / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(v.shape) for k, v in
                                                                module.state_dict().items()}
    module.load_state_dict(tensors)  # strict: every parameter and buffer, nothing more
    model = FlatModel.of(module)
    accuracy, _ = evaluate(model, model.initial(), synthetic.x_test, synthetic.y_test)
    assert accuracy == summary["final_accuracy"]
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata["fedpress_version"] == __version__ and metadata["rounds"] == "3"
    assert (metadata["name"], metadata["algorithm"], metadata["dataset"], metadata["model"]) == \
        ("tiny", "fedavg", "mnist", "mlp")


# ---------------------------------------------------------------------------- summary.json, ledger.csv


def test_summary_json_is_strict_json_with_null_for_nan(monkeypatch, tmp_path):
    """A one-logit run on a dataset without a test split: no accuracy, final_accuracy NaN."""
    from fedpress.report import compare_rows, read_summary

    ds = binary_dataset()
    monkeypatch.setattr("fedpress.runtime.experiment.load", lambda name, normalize=True: ds)
    cfg = async_config(**{"model": {"name": "logreg", "outputs": 1, "init": "zeros"}, "rounds": 2})
    summary = asynchronous.run(cfg, tmp_path, progress=False)
    assert math.isnan(summary["final_accuracy"])  # the summary returned keeps its floats
    text = (tmp_path / "summary.json").read_text()
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert strict["final_accuracy"] is None and strict["best_accuracy"] is None
    assert read_summary(tmp_path)["final_accuracy"] is None
    assert compare_rows([tmp_path])[0]["final_accuracy"] is None  # "—" in `fedpress compare`


def test_ledger_rounds_are_the_metrics_rounds(synthetic, tmp_path):
    run(tiny_config(rounds=3), tmp_path, progress=False)
    with open(tmp_path / "ledger.csv") as f:
        ledger = list(csv.DictReader(f))
    table = rows(tmp_path / "metrics.csv")
    assert {e["round"] for e in ledger} == {r["round"] for r in table} == {"1", "2", "3"}
    for r in table:
        up = sum(int(e["bytes"]) for e in ledger if e["round"] == r["round"] and e["direction"] == "up")
        assert up == int(r["uplink_bytes"])
