"""Damaged checkpoints, careless commands and rejected updates: refused or reported by
name, with the run directory left as it was (issue 16, items 5 to 8)."""

import json
import os
from dataclasses import replace

import pytest
import torch

from fedpress import state
from fedpress.cli import main
from fedpress.config import dumps
from fedpress.errors import CheckpointError, ConfigError, RunDirectoryError
from fedpress.runtime import executor as executors
from fedpress.sim import asynchronous, run
from tests.sim.conftest import tiny_config
from tests.sim.test_async import async_config
from tests.sim.test_run import rows


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def killed_at_round_3(out, **overrides):
    """A run killed after round 3 (its checkpoint from round 2 on disk)."""

    def stop(row):
        if row["round"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(**overrides), out, progress=False, on_round_end=stop)
    assert (out / "checkpoint.pt").exists()


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails loudly: what is checked before it must fail first."""

    def load(name, normalize=True):
        raise AssertionError("the data was loaded before the run directory was checked")

    monkeypatch.setattr("fedpress.runtime.experiment.load", load)


# ---------------------------------------------------------------------------- 5. checkpoints


@pytest.mark.parametrize("damage, says", [
    (lambda b: b[:-1] + bytes([b[-1] ^ 0x01]), "damaged"),  # one bit of the payload
    (lambda b: b[:100] + bytes([b[100] ^ 0x10]) + b[101:], "damaged"),
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:20], "truncated inside its header"),
    (lambda b: b"PK\x03\x04" + b[4:], "not a fedpress checkpoint"),
])
def test_a_damaged_checkpoint_is_refused_by_name_and_the_directory_is_left_as_it_was(synthetic, tmp_path, damage,
                                                                                      says):
    killed_at_round_3(tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(damage(checkpoint.read_bytes()))
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=says):
        run(tiny_config(), tmp_path, progress=False, resume=True)
    assert snapshot(tmp_path) == before


def test_every_byte_of_a_checkpoint_is_covered(tmp_path):
    path = tmp_path / "ck.pt"
    state.save({"x": torch.arange(8.0), "round": 3}, path)
    good = path.read_bytes()
    for i in range(0, len(good), max(1, len(good) // 64)):
        path.write_bytes(good[:i] + bytes([good[i] ^ 0x04]) + good[i + 1:])
        with pytest.raises(CheckpointError):
            state.load(path)


def test_a_damaged_checkpoint_through_the_cli_is_one_line(synthetic, tmp_path, capsys):
    killed_at_round_3(tmp_path / "r")
    checkpoint = tmp_path / "r" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-7])
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config()))
    assert main(["run", str(config), "--out", str(tmp_path / "r"), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedpress: ") and "truncated" in err and "\n" not in err


# ---------------------------------------------------------------------------- 6. --resume and reruns


def test_resume_with_nothing_to_resume_says_so(synthetic, tmp_path):
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        run(tiny_config(), tmp_path / "empty", progress=False, resume=True)


def test_resume_of_a_finished_run_says_so_and_a_changed_config_is_refused(synthetic, tmp_path):
    run(tiny_config(rounds=4), tmp_path, progress=False)
    before = snapshot(tmp_path)
    with pytest.raises(RunDirectoryError, match=r"finished \(4 rounds\); nothing to resume"):
        run(tiny_config(rounds=4), tmp_path, progress=False, resume=True)
    with pytest.raises(ConfigError, match="different config"):
        run(tiny_config(rounds=8, seed=9), tmp_path, progress=False, resume=True)
    assert snapshot(tmp_path) == before


def test_rerunning_into_a_run_is_refused_unless_asked_to_overwrite(synthetic, tmp_path, no_data):
    (tmp_path / "config.toml").write_text(dumps(tiny_config()))
    (tmp_path / "summary.json").write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(RunDirectoryError, match="holds a run already.*--overwrite"):
        run(tiny_config(), tmp_path, progress=False)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_the_run(synthetic, tmp_path):
    run(tiny_config(rounds=2, seed=1), tmp_path, progress=False)
    summary = run(tiny_config(rounds=3), tmp_path, progress=False, overwrite=True)
    assert summary["rounds"] == 3 and len(rows(tmp_path / "metrics.csv")) == 3


def test_a_metrics_write_cut_short_is_cleared_on_resume(synthetic, tmp_path):
    killed_at_round_3(tmp_path)
    (tmp_path / "metrics.csv.tmp").write_text("round,wall_sec")  # a kill while metrics.csv was replaced
    run(tiny_config(), tmp_path, progress=False, resume=True)
    assert not list(tmp_path.glob("*.tmp")) and len(rows(tmp_path / "metrics.csv")) == 6


# 3 rounds with eval_every = 2 evaluate round 3 only because it is the last; 6 rounds do not
@pytest.mark.parametrize("first", [4, 3])
def test_resuming_a_finished_run_with_more_rounds_extends_it_bit_for_bit(synthetic, tmp_path, first):
    cfg = {"algorithm.name": "topk_ef", "algorithm.ratio": 0.1, "eval_every": 2}
    whole = run(tiny_config(rounds=6, **cfg), tmp_path / "whole", progress=False)
    run(tiny_config(rounds=first, **cfg), tmp_path / "extended", progress=False)
    extended = run(tiny_config(rounds=6, **cfg), tmp_path / "extended", progress=False, resume=True)
    assert rows(tmp_path / "whole" / "metrics.csv") == rows(tmp_path / "extended" / "metrics.csv")
    for name in ("ledger.csv", "model.safetensors"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "extended" / name).read_bytes(), name
    assert {k: v for k, v in extended.items() if k != "wall_seconds"} == \
        {k: v for k, v in whole.items() if k != "wall_seconds"}


@pytest.mark.parametrize("bad", [{"device": "cuda:7"}, {"algorithm.name": "scaffnew", "train.momentum": 0.5}])
def test_a_config_setup_refuses_leaves_the_run_in_the_directory_as_it_was(synthetic, tmp_path, bad):
    if "device" in bad and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    run(tiny_config(rounds=2), tmp_path, progress=False)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError):
        run(tiny_config(rounds=2, **bad), tmp_path, progress=False, overwrite=True)
    assert snapshot(tmp_path) == before
    with pytest.raises(ConfigError):
        run(tiny_config(rounds=2, **bad), tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh" / "config.toml").exists()  # a corrected config may run there without --overwrite


def test_an_asynchronous_run_extends_too(synthetic, tmp_path):
    whole = asynchronous.run(async_config(rounds=6), tmp_path / "whole", progress=False)
    asynchronous.run(async_config(rounds=4), tmp_path / "extended", progress=False)
    extended = asynchronous.run(async_config(rounds=6), tmp_path / "extended", progress=False, resume=True)
    assert rows(tmp_path / "whole" / "metrics.csv") == rows(tmp_path / "extended" / "metrics.csv")
    assert extended["uploads"] == whole["uploads"]


# ---------------------------------------------------------------------------- 7. the output directory


def test_out_is_a_file(tmp_path, no_data):
    (tmp_path / "f").write_text("")
    with pytest.raises(RunDirectoryError, match="is a file"):
        run(tiny_config(), tmp_path / "f", progress=False)


def test_out_under_a_file(tmp_path, no_data):
    (tmp_path / "f").write_text("")
    with pytest.raises(RunDirectoryError, match="cannot be written"):
        run(tiny_config(), tmp_path / "f" / "run", progress=False)


def test_an_output_name_taken_by_a_directory_is_found_before_training(tmp_path, no_data):
    (tmp_path / "summary.json").mkdir()
    with pytest.raises(RunDirectoryError, match="summary.json is a directory"):
        run(tiny_config(), tmp_path, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_out_not_writable(tmp_path, no_data):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(RunDirectoryError, match="cannot be written"):
        run(tiny_config(), tmp_path / "ro", progress=False)


def test_output_errors_through_the_cli_are_one_line(tmp_path, capsys, no_data):
    (tmp_path / "f").write_text("")
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config()))
    assert main(["run", str(config), "--out", str(tmp_path / "f"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"fedpress: --out {tmp_path / 'f'} is a file, not a directory"


# ---------------------------------------------------------------------------- 8. every update rejected


def test_a_run_whose_every_update_was_rejected_says_so(synthetic, tmp_path, capsys, monkeypatch):
    class Diverging(executors.Sequential):  # every client's local training ends in NaN (train.lr = 1e6, say)
        def run(self, model, jobs, spec):
            return [replace(r, x=torch.full_like(r.x, float("nan"))) for r in super().run(model, jobs, spec)]

    monkeypatch.setitem(executors.EXECUTORS, "sequential", Diverging)
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config(rounds=3)))
    assert main(["run", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["accepted_updates"] == 0 and summary["rounds_without_updates"] == 3
    assert summary["rejected_updates"] == 3 * 4 and set(summary["rejections"]) == {"NON_FINITE_RESULT"}
    assert "12 of 12 updates rejected (NON_FINITE_RESULT 12); 3 rounds aggregated none" in out
    assert err.count("no update was accepted (NON_FINITE_RESULT:4)") == 3
