"""The client store (runtime/store.py, issue 21): states round-trip exactly, a disk run
equals the in-memory run bit for bit, changes are durable only with the checkpoint they
belong to, narrowed precisions do what docs say, bad input is refused by name."""

import json
import sqlite3

import pytest
import torch

from fedpress.compress.compose import ErrorFeedbackState
from fedpress.config import from_dict
from fedpress.errors import CheckpointError, ConfigError
from fedpress.runtime.store import DATABASE, DiskStore, PackedStore, pack, unpack
from fedpress.sim import asynchronous, run
from tests.sim.conftest import tiny_config
from tests.sim.test_async import async_config
from tests.sim.test_run import rows


def a_state(seed=0, d=1000):
    """A state like the algorithms': a frozen dataclass of tensors, nested, with an int and a float64."""
    g = torch.Generator().manual_seed(seed)
    inner = (torch.randn(3, generator=g, dtype=torch.float64), torch.arange(4), 7)
    return ErrorFeedbackState(torch.randn(d, generator=g), inner)


def same(a, b) -> bool:
    """Equal bit for bit, dtypes included, through dataclasses and tuples."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.view(torch.uint8) if a.numel() else a, b.view(torch.uint8) if b.numel() else b)
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


# ---------------------------------------------------------------------------- packing


def test_a_packed_state_round_trips_bit_for_bit():
    state = a_state()
    assert same(unpack(pack(state)), state)


@pytest.mark.parametrize("precision, dtype, rel", [("fp16", torch.float16, 2**-11), ("bf16", torch.bfloat16, 2**-8)])
def test_a_narrowed_state_keeps_float32_tensors_to_the_stated_precision_and_nothing_else_changes(precision, dtype,
                                                                                                 rel):
    state = a_state()
    back = unpack(pack(state, precision))
    assert back.residual.dtype == torch.float32
    assert torch.equal(back.residual, state.residual.to(dtype).float())  # exactly fl(e), widened
    err = (back.residual - state.residual).abs()
    assert bool((err <= rel * state.residual.abs()).all())  # the bound docs/architecture.md states
    assert same(back.inner, state.inner)  # float64 and int tensors are not narrowed
    assert len(pack(state, precision)) < 0.6 * len(pack(state))


def test_fp16_states_saturate_instead_of_overflowing():
    """A residual beyond fp16's range is kept at ±65504, finite: its client can still upload."""
    from fedpress.runtime.store import FP16_MAX

    state = ErrorFeedbackState(torch.tensor([7e4, -1e9, 3.0]), None)
    back = unpack(pack(state, "fp16"))
    assert back.residual.tolist() == [FP16_MAX, -FP16_MAX, 3.0]


def test_packed_store_behaves_as_a_mapping_and_survives_a_checkpoint_round_trip(tmp_path):
    from fedpress import state as state_io

    store = PackedStore("bf16")
    store[5], store[2] = a_state(1), a_state(2)
    assert sorted(store) == [2, 5] and len(store) == 2 and 5 in store and 3 not in store
    state_io.save({"s": store}, tmp_path / "c.pt")
    back = state_io.load(tmp_path / "c.pt")["s"]
    assert isinstance(back, PackedStore) and same(back[5], store[5])
    del store[5]
    assert 5 not in store


# ---------------------------------------------------------------------------- the disk store


def test_disk_store_changes_are_durable_only_once_committed(tmp_path):
    path = tmp_path / "s.sqlite"
    store = DiskStore(path)
    store[1] = a_state(1)
    store.commit("checkpoint", b"round 1")
    store[1], store[2] = a_state(10), a_state(2)  # round 2's changes, not committed: a kill drops them
    assert same(store[1], a_state(10))  # read within the open transaction
    store.close()
    reopened = DiskStore(path)
    assert same(reopened[1], a_state(1)) and 2 not in reopened and len(reopened) == 1
    import numpy as np

    assert np.int64(1) in reopened and torch.tensor(1) in reopened and "1" not in reopened  # as a dict
    assert reopened.read("checkpoint") == b"round 1" and reopened.read("final") is None
    reopened.forget("checkpoint")
    assert reopened.read("checkpoint") is None


def test_disk_store_refuses_a_file_that_is_not_its_database_and_names_a_damaged_state(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database " * 100)
    with pytest.raises(CheckpointError, match="junk.sqlite is not a readable client-state database"):
        DiskStore(junk)
    store = DiskStore(tmp_path / "s.sqlite")
    store[4] = a_state()
    store.commit()
    store.db.execute("UPDATE states SET state = substr(state, 1, 100) WHERE client = 4")
    with pytest.raises(CheckpointError, match="the state of client 4 is damaged"):
        store[4]
    with pytest.raises(KeyError):
        store[99]


# ---------------------------------------------------------------------------- runs


def outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    return (rows(out / "metrics.csv"), (out / "ledger.csv").read_text(),
            {k: v for k, v in summary.items() if k != "wall_seconds"})


TOPK = {"algorithm.name": "topk_ef", "algorithm.ratio": 0.05, "rounds": 6}


@pytest.mark.parametrize("engine", ["rounds", "async"])
def test_a_disk_store_run_equals_the_in_memory_run_bit_for_bit(tmp_path, synthetic, engine):
    make, go = (tiny_config, run) if engine == "rounds" else (async_config, asynchronous.run)
    extra = TOPK if engine == "rounds" else {"algorithm.name": "qafel", "train.lr": 0.02, "rounds": 6}
    go(make(**extra), tmp_path / "memory", progress=False)
    go(make(**extra, **{"client_state.store": "disk"}), tmp_path / "disk", progress=False)
    assert outputs(tmp_path / "disk") == outputs(tmp_path / "memory")
    assert (tmp_path / "disk" / DATABASE).exists() and not (tmp_path / "disk" / "final.pt").exists()
    db = sqlite3.connect(tmp_path / "disk" / DATABASE)
    assert {r[0] for r in db.execute("SELECT name FROM progress")} == {"final"}  # the checkpoint went at the end
    if engine == "rounds":  # every client sampled once holds its residual
        assert db.execute("SELECT COUNT(*) FROM states").fetchone()[0] >= 4


def test_a_disk_run_resumes_from_its_database_and_extends_a_finished_run(tmp_path, synthetic):
    cfg = tiny_config(**TOPK, **{"client_state.store": "disk"})
    run(tiny_config(**{**TOPK, "rounds": 9}), tmp_path / "reference", progress=False)
    run(cfg, tmp_path / "run", progress=False)
    longer = tiny_config(**{**TOPK, "rounds": 9}, **{"client_state.store": "disk"})
    run(longer, tmp_path / "run", resume=True, progress=False)
    assert outputs(tmp_path / "run") == outputs(tmp_path / "reference")


def test_states_written_after_the_last_checkpoint_are_rolled_back_on_resume(tmp_path, synthetic):
    """A run stopped after round 3 with its last checkpoint at round 2: round 3's states were
    written to the database but not committed, and the resumed run recomputes them."""
    cfg = tiny_config(**TOPK, **{"client_state.store": "disk"})
    stop_after = 3

    class Stop(Exception):
        pass

    def stop(row):
        if row["round"] == stop_after:
            raise Stop

    with pytest.raises(Stop):
        run(cfg, tmp_path / "run", progress=False, on_round_end=stop)
    run(tiny_config(**TOPK), tmp_path / "reference", progress=False)
    run(cfg, tmp_path / "run", resume=True, progress=False)
    assert outputs(tmp_path / "run") == outputs(tmp_path / "reference")


def test_a_disk_run_killed_after_its_final_commit_resumes_to_write_its_outputs(tmp_path, synthetic, monkeypatch):
    """The final state is committed before the outputs are written: a run stopped in between
    (here: the plot raises) resumes from that final state, not from the checkpoint before it,
    and ends with the uninterrupted run's outputs."""
    import fedpress.report

    cfg = tiny_config(**TOPK, **{"client_state.store": "disk"})
    run(tiny_config(**TOPK), tmp_path / "reference", progress=False)

    def crash(path):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(fedpress.report, "plot_run", crash)
        run(cfg, tmp_path / "run", progress=False)
    db = sqlite3.connect(tmp_path / "run" / DATABASE)
    records = dict(db.execute("SELECT name, data FROM progress").fetchall())
    db.close()
    assert records["checkpoint"] == records["final"]  # the older checkpoint is gone with the final commit
    run(cfg, tmp_path / "run", resume=True, progress=False)
    assert outputs(tmp_path / "run") == outputs(tmp_path / "reference")


def test_narrowed_states_change_the_run_by_rounding_only(tmp_path, synthetic):
    run(tiny_config(**TOPK), tmp_path / "fp32", progress=False)
    run(tiny_config(**TOPK, **{"client_state.precision": "bf16"}), tmp_path / "bf16", progress=False)
    exact, narrowed = rows(tmp_path / "fp32" / "metrics.csv"), rows(tmp_path / "bf16" / "metrics.csv")
    assert exact[0]["train_loss"] == narrowed[0]["train_loss"]  # round 1 reads no stored state
    assert exact != narrowed  # later rounds read residuals kept in bf16
    last = float(exact[-1]["test_accuracy"]), float(narrowed[-1]["test_accuracy"])
    assert abs(last[0] - last[1]) < 0.1


def test_client_state_config_is_checked_and_refused_on_flower(tmp_path, synthetic):
    with pytest.raises(ConfigError, match="client_state.store = 'ssd'; allowed"):
        tiny_config(**{"client_state.store": "ssd"})
    with pytest.raises(ConfigError, match="client_state.precision = 'fp8'"):
        tiny_config(**{"client_state.precision": "fp8"})
    with pytest.raises(ConfigError, match="client_state.cache_mb = 0"):
        tiny_config(**{"client_state.cache_mb": 0})
    with pytest.raises(ConfigError, match="client_state.shards is not a config key"):
        tiny_config(**{"client_state.shards": 2})
    from fedpress.runtime.experiment import setup
    from fedpress.sim.rounds import prepare

    with pytest.raises(ConfigError, match="on Flower each node keeps its own client's state"):
        prepare(setup(tiny_config(**{"client_state.store": "disk"})), tmp_path / "f", resume=False)


def test_resuming_with_another_client_state_table_is_refused(tmp_path, synthetic):
    run(tiny_config(**{**TOPK, "rounds": 4}), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"its \[client_state\] differs"):
        run(tiny_config(**{**TOPK, "rounds": 6}, **{"client_state.store": "disk"}), tmp_path / "run", resume=True,
            progress=False)


def test_the_config_round_trips_through_its_toml(tmp_path):
    from fedpress.config import dumps, load

    cfg = tiny_config(**{"client_state.store": "disk", "client_state.precision": "fp16"})
    (tmp_path / "c.toml").write_text(dumps(cfg))
    assert load(tmp_path / "c.toml") == cfg
    assert from_dict({}).client_state is None and "[client_state]" not in dumps(from_dict({}))

