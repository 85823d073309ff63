"""The `device` key: local training and evaluation on a torch device, states and bytes on the CPU.

Tests that need a GPU run where one is present and are skipped elsewhere."""

import csv

import pytest
import torch

from fedpress.errors import ConfigError
from fedpress.local import LocalPlan, Proximal, on_device
from fedpress.runtime.experiment import resolve_device
from fedpress.runtime.turn import train_spec
from fedpress.sim import run, setup
from tests.sim.conftest import tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def ledger_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_device_name_that_is_not_one_is_a_config_error():
    with pytest.raises(ConfigError, match=r"device = 'gpu'; allowed: .*cuda:N"):
        tiny_config(device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_named_before_any_work(synthetic):
    with pytest.raises(ConfigError, match="device = 'cuda'.*no CUDA device"):
        setup(tiny_config(device="cuda"))


@cuda
def test_a_cuda_index_past_the_last_device_is_named(synthetic):
    with pytest.raises(ConfigError, match="cuda:99"):
        setup(tiny_config(device="cuda:99"))


def test_auto_picks_the_accelerator_if_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_on_the_cpu_a_plan_is_not_copied():
    plan = LocalPlan(torch.zeros(6), penalty=Proximal(torch.ones(4), 0.5), grad_offset=torch.ones(4))
    assert on_device(plan, torch.device("cpu")) is plan


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="auto is an accelerator")
def test_auto_on_a_cpu_machine_is_the_cpu_run_bit_for_bit(synthetic, tmp_path):
    cfg = {"rounds": 2, "algorithm.name": "topk_ef", "algorithm.ratio": 0.1}
    run(tiny_config(**cfg), tmp_path / "cpu", progress=False)
    run(tiny_config(device="auto", **cfg), tmp_path / "auto", progress=False)
    for name in ("metrics.csv", "ledger.csv"):
        a = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in ledger_rows(tmp_path / "cpu" / name)]
        b = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in ledger_rows(tmp_path / "auto" / name)]
        assert a == b, name


@cuda
def test_on_cuda_the_model_trains_there_and_states_and_bytes_stay_on_the_cpu(synthetic, tmp_path):
    cfg = {"rounds": 4, "algorithm.name": "topk_ef", "algorithm.ratio": 0.1}
    exp = setup(tiny_config(device="cuda", **cfg))
    assert exp.device.type == "cuda" and train_spec(exp, 0).device.type == "cuda"
    assert all(p.device.type == "cuda" for p in exp.model.module.parameters())
    assert exp.x0.device.type == "cpu"
    gpu = run(tiny_config(device="cuda", **cfg), tmp_path / "cuda", progress=False)
    cpu = run(tiny_config(**cfg), tmp_path / "cpu", progress=False)
    # the same number of messages of the same kinds; accuracy close (kernels differ in their sums)
    up = [(r["round"], r["direction"], r["client"]) for r in ledger_rows(tmp_path / "cuda" / "ledger.csv")]
    assert up == [(r["round"], r["direction"], r["client"]) for r in ledger_rows(tmp_path / "cpu" / "ledger.csv")]
    assert abs(gpu["final_accuracy"] - cpu["final_accuracy"]) < 0.05
    assert gpu["final_accuracy"] > 0.8


@cuda
def test_fedcomloc_local_compresses_its_gradient_point_on_cuda(synthetic, tmp_path):
    """The plan's codec runs on the CPU and hands the point back to the model's device."""
    cfg = tiny_config(device="cuda", rounds=3, **{"algorithm.name": "fedcomloc", "algorithm.variant": "local",
                                                 "train.momentum": 0.0, "clients_per_round": 12})
    assert run(cfg, tmp_path, progress=False)["final_accuracy"] > 0.5
