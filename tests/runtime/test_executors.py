"""The threads and processes executors give the sequential run bit for bit (with one torch
thread per client, as they train), and the virtual clock's batches of starts give what
one-at-a-time training gave (issue 17)."""


import pytest
import torch
from torch import nn

from fedpress import state
from fedpress.errors import ConfigError
from fedpress.local import FlatModel, LocalPlan, TrainSpec
from fedpress.runtime import executor as executors
from fedpress.runtime.executor import Job, Sequential, Threads
from fedpress.runtime.vmap import CPU_CHUNK, Vectorized, plan_reason
from fedpress.sim import asynchronous, run, setup
from tests.sim.conftest import tiny_config
from tests.sim.test_async import async_config
from tests.sim.test_run import rows


def outputs(out):
    """metrics (without wall times), ledger, and the final model of a run directory."""
    server = state.load(out / "final.pt")["progress"].server
    return rows(out / "metrics.csv"), rows(out / "ledger.csv"), server.x


def same(a, b):
    return a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


TOPK = {"algorithm.name": "topk_ef", "algorithm.ratio": 0.1, "rounds": 3}


@pytest.mark.parametrize("name", ["threads", "processes"])
def test_threads_and_processes_equal_the_one_thread_sequential_run_bit_for_bit(synthetic, tmp_path, one_thread,
                                                                               name):
    run(tiny_config(**TOPK), tmp_path / "sequential", progress=False)
    run(tiny_config(executor=name, workers=2, **TOPK), tmp_path / name, progress=False)
    assert same(outputs(tmp_path / "sequential"), outputs(tmp_path / name))


def test_scaffnew_in_threads_equals_sequential(synthetic, tmp_path, one_thread):
    cfg = {"algorithm.name": "scaffnew", "train.momentum": 0.0, "rounds": 3, "clients_per_round": 12}
    run(tiny_config(**cfg), tmp_path / "sequential", progress=False)
    run(tiny_config(executor="threads", **cfg), tmp_path / "threads", progress=False)
    assert same(outputs(tmp_path / "sequential"), outputs(tmp_path / "threads"))


class OneAtATime(Sequential):
    """Today's virtual clock: every start trained on its own. Records the batch sizes it was given."""

    batches: list[int] = []

    def run(self, model, jobs, spec):
        OneAtATime.batches.append(len(jobs))
        results = []
        for job in jobs:
            results += super().run(model, [job], spec)
        return results


@pytest.mark.parametrize("name", ["threads", "processes"])
def test_the_virtual_clock_trains_a_server_versions_starts_as_one_batch_and_gives_the_same_run(
        synthetic, tmp_path, one_thread, name):
    cfg = {"algorithm.name": "qafel", "rounds": 4, "async.concurrency": 6}
    OneAtATime.batches = []
    asynchronous.run(async_config(**cfg), tmp_path / "one", progress=False, executor=OneAtATime())
    assert max(OneAtATime.batches) > 1  # starts of one server version went to the executor together
    asynchronous.run(async_config(executor=name, workers=2, **cfg), tmp_path / name, progress=False)
    assert same(outputs(tmp_path / "one"), outputs(tmp_path / name))


def test_a_model_with_dropout_trains_one_client_at_a_time_in_threads_with_a_notice(capsys, one_thread, monkeypatch):
    monkeypatch.setattr(executors, "_told", set())  # the notice is once per process
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Dropout(0.5), nn.Linear(32, 4))
    model = FlatModel.of(module)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 4, (64,), generator=g)

    def jobs():
        return [Job(LocalPlan(model.initial().detach()), x[i::3], y[i::3], torch.Generator().manual_seed(i))
                for i in range(3)]

    spec = TrainSpec(batch_size=8)
    with Threads(2) as threads:
        ours = threads.run(model, jobs(), spec)
    theirs = Sequential().run(model, jobs(), spec)
    assert all(torch.equal(a.x, b.x) for a, b in zip(ours, theirs, strict=True))
    assert "dropout" in capsys.readouterr().err


def test_auto_picks_threads_on_several_cores_and_sequential_on_one(synthetic, monkeypatch):
    exp = setup(tiny_config(executor="auto"))
    monkeypatch.setattr(executors, "cores", lambda: 2)
    with executors.make_executor(exp) as chosen:
        assert isinstance(chosen, Threads)
        assert isinstance(chosen.vectorized, Vectorized) and chosen.vectorized.max_clients == CPU_CHUNK
    monkeypatch.setattr(executors, "cores", lambda: 1)
    assert type(executors.make_executor(exp)) is Sequential


def test_auto_vmaps_a_batch_whose_plans_stack_and_threads_one_whose_plans_do_not(synthetic, monkeypatch):
    monkeypatch.setattr(executors, "cores", lambda: 2)
    exp = setup(tiny_config(executor="auto"))
    ran = []
    monkeypatch.setattr(Vectorized, "run", lambda self, model, jobs, spec: ran.append("vmap") or [])
    monkeypatch.setattr(Threads, "run", lambda self, model, jobs, spec: ran.append("threads") or [])
    x, y = exp.dataset.x_train[:8], exp.dataset.y_train[:8]
    plain = Job(LocalPlan(exp.x0), x, y, torch.Generator())
    unstackable = Job(LocalPlan(exp.x0, grad_at=lambda w: w), x, y, torch.Generator())  # a callable grad_at
    assert plan_reason(unstackable) is not None
    with executors.make_executor(exp) as auto:
        auto.run(exp.model, [plain, plain], TrainSpec())
        auto.run(exp.model, [plain, unstackable], TrainSpec())
    assert ran == ["vmap", "threads"]


def test_executor_and_workers_are_checked():
    with pytest.raises(ConfigError, match="executor = 'gpu'; allowed: .*'threads', 'processes'"):
        tiny_config(executor="gpu")
    with pytest.raises(ConfigError, match="workers = -1 must be >= 0"):
        tiny_config(workers=-1)


def test_a_model_that_draws_randomness_in_its_forward_is_found_by_a_probe(capsys, one_thread, monkeypatch):
    """SimpleConvNet's dropout is a function call, not a layer: the probing forward finds it."""
    monkeypatch.setattr(executors, "_told", set())  # the notice is once per process
    from fedpress.models import build_model

    module = build_model("simple_convnet", (1, 8, 8), 4, torch.Generator().manual_seed(1), dropout=0.5)
    model = FlatModel.of(module)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 32, 1, 8, 8, generator=g), torch.randint(0, 4, (6, 32), generator=g)

    def jobs():
        return [Job(LocalPlan(model.initial().detach()), x[i], y[i], torch.Generator().manual_seed(i))
                for i in range(6)]

    spec = TrainSpec(batch_size=8, epochs=2)
    theirs = Sequential().run(model, jobs(), spec)
    with Threads(2) as threads:
        for _ in range(3):
            ours = threads.run(model, jobs(), spec)
            assert all(torch.equal(a.x, b.x) for a, b in zip(ours, theirs, strict=True))
    assert "dropout" in capsys.readouterr().err
    plain = build_model("simple_convnet", (1, 8, 8), 4, torch.Generator().manual_seed(1), dropout=0.0)
    assert not executors.draws_randomness(plain, x[0][:2])


def test_auto_trains_a_single_client_with_the_process_threads(synthetic, monkeypatch):
    """A batch of one (the virtual clock's, often) gains nothing from threads: auto runs it as
    sequential does, with every torch thread, and a batch of several in threads."""
    monkeypatch.setattr(executors, "cores", lambda: 2)
    exp = setup(tiny_config(executor="auto"))
    seen = []
    monkeypatch.setattr(executors, "train", lambda *a, **k: seen.append(torch.get_num_threads()) or "r")
    before = torch.get_num_threads()
    with executors.make_executor(exp) as auto:
        auto.vectorized = None  # as for a model that does not stack: several clients go to threads
        job = Job(LocalPlan(exp.x0), exp.dataset.x_train[:8], exp.dataset.y_train[:8], torch.Generator())
        auto.run(exp.model, [job], TrainSpec())
        auto.run(exp.model, [job, job, job], TrainSpec())
    assert seen == [before, 1, 1, 1]


@pytest.mark.parametrize("name, extra", [
    ("sparsyfed", {}),  # Powerprop layers with activation pruning: a module with caches crosses to the workers
    ("fedcomloc", {"algorithm.variant": "local", "train.momentum": 0.0}),  # a CompressedPoint plan, pickled
])
def test_reparameterised_models_and_compressed_points_train_alike_in_every_executor(synthetic, tmp_path, one_thread,
                                                                                     name, extra):
    cfg = {"algorithm.name": name, "rounds": 2, **extra}
    run(tiny_config(**cfg), tmp_path / "sequential", progress=False)
    for executor in ("threads", "processes"):
        run(tiny_config(executor=executor, workers=2, **cfg), tmp_path / executor, progress=False)
        assert same(outputs(tmp_path / "sequential"), outputs(tmp_path / executor)), executor
