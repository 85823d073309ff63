"""All four runtimes train through the config's executor, with the same client turn: a
counting executor sees every local training of the simulator's rounds, the virtual clock,
Flower's rounds and Flower's asynchronous loop, and the runs are the ones without it."""

import pytest

pytest.importorskip("flwr")

from fedpress.runtime import executor as executors  # noqa: E402
from fedpress.sim import asynchronous, run  # noqa: E402
from tests.flower.test_grid import CONSTANT, on_grid, rows, task_identity  # noqa: E402, F401  (autouse)
from tests.sim.conftest import tiny_config  # noqa: E402
from tests.sim.test_async import async_config  # noqa: E402


class Counting(executors.Sequential):
    trained = 0

    def run(self, model, jobs, spec):
        Counting.trained += len(jobs)
        return super().run(model, jobs, spec)


@pytest.fixture
def counting(monkeypatch):
    Counting.trained = 0
    monkeypatch.setitem(executors.EXECUTORS, "sequential", Counting)
    return Counting


def test_rounds_in_process_and_on_flower_train_every_client_through_the_executor(synthetic, one_thread,
                                                                                  tmp_path, counting):
    cfg = tiny_config(rounds=2, **{"algorithm.name": "topk_ef", "algorithm.ratio": 0.1})
    run(cfg, tmp_path / "sim", progress=False)
    assert counting.trained == 2 * cfg.clients_per_round
    on_grid(cfg, tmp_path / "grid")
    assert counting.trained == 4 * cfg.clients_per_round
    assert rows(tmp_path / "sim" / "metrics.csv") == rows(tmp_path / "grid" / "metrics.csv")


def test_the_virtual_clock_and_flowers_async_loop_train_every_start_through_the_executor(synthetic, one_thread,
                                                                                          tmp_path, counting):
    cfg = async_config(**CONSTANT)
    summary = asynchronous.run(cfg, tmp_path / "virtual", progress=False)
    virtual = counting.trained
    assert virtual >= summary["uploads"]  # every upload was trained; starts still in flight too
    flower, _ = on_grid(cfg, tmp_path / "grid")
    assert counting.trained - virtual >= flower["uploads"] > 0
