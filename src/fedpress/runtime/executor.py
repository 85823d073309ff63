"""Executors run the local training of a batch of clients.

A runtime hands an executor a list of jobs (a LocalPlan, the client's data, its generator)
and the round's TrainSpec, and gets LocalResults back in the same order. Because a plan is
data (it pickles and stacks) and `local.train` is a pure function of (plan, data,
generator), every executor gives the sequential results; how exactly:

    sequential   one client after another, with the process's torch threads
    threads      N workers, each client trained with one torch thread, each worker with its
                 own copy of the module (local training binds tensors into the module, which
                 two threads must not share): bit for bit the sequential run with one torch
                 thread
    processes    a pool of N worker processes started once per run and kept warm, the
                 training set shared with them once (shared memory); a job crosses as
                 (plan, sample indices, generator state), a result as a LocalResult: bit for
                 bit the sequential run with one torch thread
    vmap         the clients at once with torch.func over stacked parameters
                 (`runtime/vmap.py`; on a CPU in chunks of 10): equal to sequential within a
                 stated float tolerance
    auto         vmap on a GPU when the model stacks; on several cores, a batch of several
                 clients vmapped when model and plans stack, else in threads, and a single
                 client (or a model that draws randomness) with the process's threads; on
                 one core, sequential

`make_executor(exp)` builds the config's (`executor`, `workers`); an executor is closed
when its run ends (`close`, or `with`).
"""

from __future__ import annotations

import copy
import os
import pickle
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from fedpress.local import FlatModel, LocalPlan, LocalResult, TrainSpec, train


@dataclass(frozen=True)
class Job:
    plan: LocalPlan
    inputs: torch.Tensor  # (n_i, ...) the client's samples
    targets: torch.Tensor  # (n_i,)
    rng: torch.Generator
    indices: torch.Tensor | None = None  # (n_i,) the samples' rows in the training set (a process pool's way)


class Executor(Protocol):
    def run(self, model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]: ...

    def close(self) -> None: ...


def cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_told: set[str] = set()


def notice(text: str) -> None:
    """A one-line notice on stderr, once per process."""
    if text not in _told:
        _told.add(text)
        print(f"fedpress: {text}", file=sys.stderr)


_probed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> whether a forward drew


def draws_randomness(module: nn.Module, sample: torch.Tensor | None = None) -> bool:
    """Whether the module draws from torch's global generator while it trains: dropout
    layers, and, given a `sample` batch, anything its forward draws in train mode (a
    functional dropout, say), found by one probing forward whose draws are compared. Such
    a model cannot train in two threads at once: the generator is the process's."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules()):
        return True
    if sample is None:
        return False
    if module not in _probed:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            before = torch.random.get_rng_state(), [torch.cuda.get_rng_state(i) for i in cuda]
            training = module.training
            module.train()
            module(sample.to(device))
            module.train(training)
            after = torch.random.get_rng_state(), [torch.cuda.get_rng_state(i) for i in cuda]
        _probed[module] = not (torch.equal(before[0], after[0])
                               and all(torch.equal(a, b) for a, b in zip(before[1], after[1], strict=True)))
    return _probed[module]


class Sequential:
    """One client after another, with the process's torch threads."""

    @classmethod
    def of(cls, exp) -> Sequential:
        return cls()

    def run(self, model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]:
        return [train(model, job.plan, job.inputs, job.targets, spec, job.rng) for job in jobs]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class one_thread:
    """torch's intra-op threads set to 1 for the block (process-wide; restored after)."""

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.before)


class Threads(Sequential):
    """N worker threads, each training one client at a time with one torch thread and its
    own copy of the module. A model that draws randomness (dropout) trains sequentially,
    with one torch thread, after a one-line notice: its draws come from the process's
    generator, which two threads cannot share."""

    def __init__(self, workers: int = 0):
        self.workers = workers or cores()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fedpress-train")
        self.local = threading.local()

    @classmethod
    def of(cls, exp) -> Threads:
        return cls(exp.config.workers)

    def model(self, model: FlatModel) -> FlatModel:
        """This thread's copy of the model (made once per thread and module)."""
        copies = getattr(self.local, "copies", None)
        if copies is None:
            copies = self.local.copies = {}
        if id(model.module) not in copies:
            copies[id(model.module)] = (model.module, replace(model, module=copy.deepcopy(model.module)))
        return copies[id(model.module)][1]

    def run(self, model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]:
        with one_thread():
            if len(jobs) < 2 or self.workers < 2:
                return super().run(model, jobs, spec)
            if draws_randomness(model.module, jobs[0].inputs[:2]):
                notice("executor = threads: the model draws randomness (dropout) from the process's generator; "
                       "its clients train one after another")
                return super().run(model, jobs, spec)

            def one(job: Job) -> LocalResult:
                return train(self.model(model), job.plan, job.inputs, job.targets, spec, job.rng)

            # `train` forks torch's global generator around each client; two threads doing
            # that interleave, so the process's generator is forked once more around them all
            with torch.random.fork_rng(devices=[]):
                return list(self.pool.map(one, jobs))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# ---------------------------------------------------------------------------- processes

_worker: dict = {}  # in a worker process: its model, the shared training set


def _start_worker(module: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, plugins: tuple[str, ...] = ()
                  ) -> None:
    torch.set_num_threads(1)
    if plugins:  # what the config's plugins register (a model class, a codec) exists here too
        from fedpress.extend import import_plugins

        import_plugins(plugins)
    _worker.update(model=FlatModel.of(module), x=x_train, y=y_train)
    # pay the first-use costs of autograd and the kernels once, at the start of the pool
    x0 = _worker["model"].initial().detach()
    train(_worker["model"], LocalPlan(x0, steps=1), x_train[:2], y_train[:2], TrainSpec(batch_size=2),
          torch.Generator().manual_seed(0))


def _ready() -> bool:
    return "model" in _worker


def _train_in_worker(task: bytes) -> bytes:
    # A job and its result cross as plain pickled bytes. Handed to the pool as objects,
    # their tensors would go through torch.multiprocessing's reductions, which move every
    # tensor into a fresh shared-memory segment (a file and an mmap per tensor per job):
    # measured here, that made one worker train 26% slower than the same clients in the
    # main process; copying 250 KB through the pipe costs about 0.1 ms.
    plan, indices, rng_state, spec = pickle.loads(task)
    return pickle.dumps(_train_one(plan, indices, rng_state, spec), protocol=pickle.HIGHEST_PROTOCOL)


def _train_one(plan: LocalPlan, indices: torch.Tensor, rng_state: torch.Tensor, spec: TrainSpec) -> LocalResult:
    rng = torch.Generator()
    rng.set_state(rng_state)
    x, y, model = _worker["x"], _worker["y"], _worker["model"]
    model.module.to(spec.device)  # in place, once: the worker's module trains where the run's does
    return train(model, plan, x[indices], y[indices], spec, rng)


class Processes(Sequential):
    """A pool of worker processes, started once (its first-use costs paid then) and kept
    for the run; the training set is put in shared memory and handed to them once. A job
    crosses as pickled (plan, indices, generator state) and a result as a pickled
    LocalResult: no client data crosses per job."""

    def __init__(self, module: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, workers: int = 0,
                 plugins: tuple[str, ...] = ()):
        import torch.multiprocessing as mp

        self.workers = workers or cores()
        x_train, y_train = x_train.share_memory_(), y_train.share_memory_()
        context = mp.get_context("spawn")  # a fork of a process with torch's threads running is unsafe
        self.pool = context.Pool(self.workers, initializer=_start_worker,
                                 initargs=(copy.deepcopy(module).cpu(), x_train, y_train, tuple(plugins)))
        self.pool.starmap(_ready, [()] * (4 * self.workers), chunksize=1)  # the workers have started

    @classmethod
    def of(cls, exp) -> Processes:
        return cls(exp.model.module, exp.dataset.x_train, exp.dataset.y_train, exp.config.workers,
                   exp.config.plugins)

    def run(self, model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]:
        if any(job.indices is None for job in jobs):  # jobs made by hand, not from the training set
            with one_thread():
                return super().run(model, jobs, spec)
        # indices.clone(): a client's indices are a view into the partition's one array, and
        # pickling a view writes its whole storage (480 MB at 100,000 clients of 600)
        tasks = [pickle.dumps((job.plan, job.indices.clone(), job.rng.get_state(), spec),
                              protocol=pickle.HIGHEST_PROTOCOL) for job in jobs]
        return [pickle.loads(result) for result in self.pool.map(_train_in_worker, tasks, chunksize=1)]

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class Auto(Threads):
    """Picks for the device and the model: `vmap` on a GPU when the model stacks. On a CPU
    with more than one core: a batch of several clients vmapped in chunks when the model and
    every plan stack (1.6x sequential for LeNet-5, against 1.26x for threads: docs/results.md),
    in threads (one torch thread each) when not; a single client, or a model that draws
    randomness, with the process's threads (so never slower than sequential). On one core,
    `sequential`."""

    def __init__(self, workers: int = 0, vectorized=None):
        super().__init__(workers)
        self.vectorized = vectorized  # a Vectorized for models that stack; None: threads only

    @classmethod
    def of(cls, exp) -> Sequential:
        stacks = model_reason(exp.model, exp.device) is None
        if exp.device.type == "cuda" and stacks:
            return Vectorized.of(exp)  # on a GPU, vectorizing small models keeps the device busy
        if (exp.config.workers or cores()) > 1:
            return cls(exp.config.workers, Vectorized.of(exp) if stacks else None)
        return Sequential.of(exp)

    def run(self, model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]:
        if len(jobs) < 2 or self.workers < 2 or draws_randomness(model.module, jobs[0].inputs[:2]):
            return Sequential.run(self, model, jobs, spec)
        if self.vectorized is not None and not any(map(plan_reason, jobs)):
            return self.vectorized.run(model, jobs, spec)
        return super().run(model, jobs, spec)


# vmap builds on Sequential, Job and notice above: imported once they exist
from fedpress.runtime.vmap import Vectorized, model_reason, plan_reason  # noqa: E402

EXECUTORS: dict[str, type] = {"sequential": Sequential, "threads": Threads, "processes": Processes,
                              "vmap": Vectorized, "auto": Auto}


def make_executor(exp) -> Executor:
    """The config's executor for this experiment (close it when the run ends)."""
    return EXECUTORS[exp.config.executor].of(exp)
