"""fedpress.sweep on the synthetic dataset of tests/sim: a tiny config, two rounds a run."""

import argparse
import json
import re
from pathlib import Path

import pytest

import fedpress.sim
from fedpress.config import dumps, load
from fedpress.errors import ConfigError, RunDirectoryError
from fedpress.report import compare, read_summary
from fedpress.sim import asynchronous
from fedpress.sweep import (
    RunLock,
    add_arguments,
    combination_name,
    main,
    parse_grid,
    parse_seeds,
    run_sweep,
    split_values,
)
from tests.sim.conftest import synthetic_dataset, tiny_config, with_overrides

TINY = {"rounds": 2, "clients_per_round": 2, "eval_every": 1, "checkpoint_every": 1, "train.batch_size": 64}


@pytest.fixture
def synthetic(monkeypatch):
    ds = synthetic_dataset()
    monkeypatch.setattr("fedpress.runtime.experiment.load", lambda name, normalize=True: ds)
    # each run's own two PNGs cost more than its training here; the sweep's figure is still drawn
    monkeypatch.setattr("fedpress.report.plot_run", lambda *args, **kwargs: None)
    return ds


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(dumps(tiny_config(**TINY)))
    return path


def command(*argv):
    parser = argparse.ArgumentParser(prog="fedpress sweep")
    add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def counting(seen, driver, stop_call=None):
    """`driver`, recording each call's (run directory, keyword arguments) in `seen`; call number
    `stop_call` raises Stop in its second round, after the checkpoint of its first."""

    def run(cfg, out, **kwargs):
        seen.append((Path(out), dict(kwargs)))
        if len(seen) == stop_call:

            def stop(row):
                if row["round"] == 2:
                    raise Stop

            kwargs["on_round_end"] = stop
        return driver(cfg, out, **kwargs)

    return run


class Stop(Exception):
    pass


@pytest.fixture
def calls(monkeypatch):
    """Every call of the synchronous driver: (run directory, keyword arguments)."""
    seen = []
    monkeypatch.setattr("fedpress.sim.run", counting(seen, fedpress.sim.run))
    return seen


def without_wall(summary):
    return {k: v for k, v in summary.items() if k != "wall_seconds"}


def test_sweep_runs_every_combination_and_seed_as_single_runs_would(synthetic, config, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(command(config, "--seeds", "0,1", "--grid", "train.lr=0.1,0.02", "--out", out, "--quiet")) == 0
    dirs = sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed*") if p.is_dir())
    assert dirs == ["train.lr=0.02/seed0", "train.lr=0.02/seed1", "train.lr=0.1/seed0", "train.lr=0.1/seed1"]
    assert not list(out.glob("*/*.lock"))

    record = json.loads((out / "sweep.json").read_text())
    assert record["config"] == str(config) and record["overrides"] == []
    assert record["grid"] == {"train.lr": ["0.1", "0.02"]} and record["seeds"] == [0, 1]
    assert [r["dir"] for r in record["runs"]] == [
        "train.lr=0.1/seed0", "train.lr=0.1/seed1", "train.lr=0.02/seed0", "train.lr=0.02/seed1",
    ]  # fmt: skip
    for i, run in enumerate(record["runs"]):
        assert run["combination"] == {"train.lr": 0.1 if i < 2 else 0.02} and run["seed"] == i % 2
        cfg = load(config, run["overrides"])
        assert (cfg.seed, cfg.train.lr, cfg.name) == (i % 2, run["combination"]["train.lr"],
                                                      f"tiny[{run['dir'].split('/')[0]}]")
        single = fedpress.sim.run(cfg, tmp_path / "single" / str(i), progress=False)
        swept = out / run["dir"]
        assert without_wall(read_summary(swept)) == without_wall(single)
        assert (swept / "ledger.csv").read_text() == (tmp_path / "single" / str(i) / "ledger.csv").read_text()

    printed = capsys.readouterr().out
    finished = [out / r["dir"] for r in record["runs"]]
    assert compare(finished) in printed and "Seeds" in compare(finished)
    assert f"plot: {out / 'compare.png'}" in printed and (out / "compare.png").stat().st_size > 0


def test_a_stopped_sweep_goes_on_with_only_the_missing_runs(synthetic, config, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    grid = {"train.lr": ["0.1", "0.02"]}
    calls = []
    monkeypatch.setattr("fedpress.sim.run", counting(calls, fedpress.sim.run, stop_call=3))
    with pytest.raises(Stop):
        run_sweep(config, out, seeds=[0, 1], grid=grid, log=lambda line: None)
    stopped = out / "train.lr=0.1" / "seed1"  # seeds outer: both combinations of seed 0 ran first
    assert [c[0] for c in calls] == [out / "train.lr=0.1/seed0", out / "train.lr=0.02/seed0", stopped]
    assert (stopped / "checkpoint.pt").exists() and not (stopped / "summary.json").exists()
    assert not (out / "train.lr=0.1" / "seed1.lock").exists()  # released on the way out

    result = run_sweep(config, out, seeds=[0, 1], grid=grid, log=lambda line: None)
    assert [c[0] for c in calls[3:]] == [stopped, out / "train.lr=0.02/seed1"]
    assert calls[3][1]["resume"] is True and calls[3][1]["overwrite"] is False
    assert calls[4][1]["resume"] is False and calls[4][1]["overwrite"] is True
    assert len(result.skipped) == 2 and result.ran["resume"] == [stopped]
    assert len(result.finished) == 4

    run_sweep(config, out, seeds=[0, 1], grid=grid, log=lambda line: None)
    assert len(calls) == 5  # nothing left to run

    result = run_sweep(config, out, seeds=[0, 1, 2], grid=grid, log=lambda line: None)
    assert [c[0] for c in calls[5:]] == [out / "train.lr=0.1/seed2", out / "train.lr=0.02/seed2"]
    assert len(result.finished) == 6
    assert json.loads((out / "sweep.json").read_text())["seeds"] == [0, 1, 2]

    # the tree is one sweep: other --set overrides or grid keys are refused before any run
    with pytest.raises(RunDirectoryError, match="holds a sweep with --set"):
        run_sweep(config, out, seeds=[3], grid=grid, overrides=["train.momentum=0.1"], log=lambda line: None)
    with pytest.raises(RunDirectoryError, match="grid keys"):
        run_sweep(config, out, seeds=[3], grid={"train.momentum": ["0.1"]}, log=lambda line: None)
    # a run directory holding another config (the base file was edited) stops the sweep before any run
    config.write_text(dumps(tiny_config(**{**TINY, "train.momentum": 0.9})))
    with pytest.raises(RunDirectoryError, match="finished run of another config .*train.momentum"):
        run_sweep(config, out, seeds=[0, 1, 2, 3], grid=grid, log=lambda line: None)
    assert len(calls) == 7 and not (out / "train.lr=0.1" / "seed3").exists()


def test_a_bad_grid_key_or_value_fails_before_any_run_with_the_config_error_of_load(synthetic, config, tmp_path,
                                                                                     calls):
    out = tmp_path / "sweep"
    for setting in ("train.nope=1", "train.momentum=1.5"):
        with pytest.raises(ConfigError) as expected:
            load(config, [setting])
        key, _, value = setting.partition("=")
        with pytest.raises(ConfigError, match=f"^{re.escape(str(expected.value))}$"):
            main(command(config, "--seeds", "0,1", "--grid", "train.lr=0.1,0.2", "--grid", f"{key}=0.5,{value}",
                         "--out", out, "--quiet"))
    assert calls == [] and not out.exists()
    with pytest.raises(ConfigError, match="--seeds"):
        run_sweep(config, out, grid={"seed": ["1"]})


def test_grid_values_read_as_set_values_into_stable_directory_names():
    assert split_values('0.1, [32,64],"a,b",{x = 1}') == ["0.1", "[32,64]", '"a,b"', "{x = 1}"]
    grid = parse_grid(["train.lr=0.1,1e-1,0.05", "model.widths=[32],[16,16]", "algorithm.name=topk_ef"])
    assert grid == {"train.lr": ["0.1", "0.05"], "model.widths": ["[32]", "[16,16]"], "algorithm.name": ["topk_ef"]}
    name = combination_name({"train.lr": 0.1, "downlink.codec": "top_k+fp16"})
    assert name == "train.lr=0.1,downlink.codec=top_k+fp16"
    name = combination_name({"model.widths": [16, 16], "data.dataset": "a/b c"})
    assert name == "model.widths=16_16,data.dataset=a_b_c"
    assert combination_name({"train.lr": 1e-5, "x": True}) == "train.lr=1e-05,x=true"
    assert combination_name({}) == "base"
    long = combination_name({f"k{i}": "v" * 20 for i in range(10)})
    assert len(long) == 120 and long == combination_name({f"k{i}": "v" * 20 for i in range(10)})
    assert parse_seeds("0, 2,1,2") == [0, 2, 1]
    for bad in (["train.lr"], ["train.lr=0.1,"], ["train.lr=1", "train.lr=2"], ["name=x"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    with pytest.raises(ConfigError):
        parse_seeds("0,x")
    with pytest.raises(SystemExit):
        command("c.toml", "--out", "o", "--target-accuracy", "97")


def test_a_run_another_process_holds_is_left_to_it(synthetic, config, tmp_path, calls):
    out = tmp_path / "sweep"
    held = RunLock(out / "base" / "seed0.lock")
    assert held.acquire()
    assert not RunLock(held.path).acquire()  # one holder at a time
    result = run_sweep(config, out, seeds=[0, 1], log=lambda line: None)
    assert [c[0] for c in calls] == [out / "base" / "seed1"]
    assert result.busy == [out / "base" / "seed0"] and result.finished == [out / "base" / "seed1"]
    held.release()
    assert not held.path.exists()
    run_sweep(config, out, seeds=[0, 1], log=lambda line: None)
    assert [c[0] for c in calls] == [out / "base" / "seed1", out / "base" / "seed0"]


def test_asynchronous_configs_run_on_the_virtual_clock(synthetic, tmp_path, calls, monkeypatch):
    raw = {
        "name": "tiny_async", "rounds": 2, "eval_every": 1,
        "data": {"dataset": "mnist", "num_clients": 6, "partition": "iid"},
        "model": {"name": "mlp", "widths": [8]},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.1},
        "algorithm": {"name": "fedbuff", "buffer_size": 2},
        "async": {"concurrency": 3},
    }  # fmt: skip
    path = tmp_path / "async.toml"
    path.write_text(dumps(with_overrides(raw, {})))
    clock = []
    monkeypatch.setattr(asynchronous, "run", counting(clock, asynchronous.run))
    result = run_sweep(path, tmp_path / "sweep", seeds=[0], grid={"async.concurrency": ["2", "3"]},
                       log=lambda line: None)
    assert calls == [] and [c[0] for c in clock] == result.finished
    assert [c[0].parent.name for c in clock] == ["async.concurrency=2", "async.concurrency=3"]
    assert all(read_summary(d)["asynchronous"] for d in result.finished)


def test_more_rounds_extend_finished_runs_with_the_executor_they_started_with(synthetic, config, tmp_path, calls):
    out = tmp_path / "sweep"
    run_sweep(config, out, seeds=[0], log=lambda line: None)
    run_dir = out / "base" / "seed0"
    assert read_summary(run_dir)["rounds"] == 2
    result = run_sweep(config, out, seeds=[0], overrides=["rounds=3"], executor="threads", log=lambda line: None)
    assert result.ran["extend"] == [run_dir]
    assert calls[1][1]["resume"] is True and calls[1][1]["overwrite"] is False
    assert read_summary(run_dir)["rounds"] == 3
    stored = load(run_dir / "config.toml")
    assert stored.rounds == 3 and stored.executor == "sequential"
    with pytest.raises(RunDirectoryError, match="finished run of another config .*rounds"):
        run_sweep(config, out, seeds=[0], overrides=["rounds=2"], log=lambda line: None)
