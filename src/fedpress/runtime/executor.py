"""Executors run the local training of a batch of clients.

A runtime hands an executor a list of jobs (a LocalPlan, the client's data, its generator)
and the round's TrainSpec, and gets LocalResults back in the same order. `Sequential` runs
them one by one on the spec's device. Because a plan is data (it pickles and stacks) and
`local.train` is a pure function of (plan, data, generator), a parallel, multi-process or
vectorized executor implements the same `run` and gives the same results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fedpress.local import FlatModel, LocalPlan, LocalResult, TrainSpec, train


@dataclass(frozen=True)
class Job:
    plan: LocalPlan
    inputs: torch.Tensor  # (n_i, ...) the client's samples
    targets: torch.Tensor  # (n_i,)
    rng: torch.Generator


class Executor(Protocol):
    def run(self, model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]: ...


class Sequential:
    def run(self, model: FlatModel, jobs: list[Job], spec: TrainSpec) -> list[LocalResult]:
        return [train(model, job.plan, job.inputs, job.targets, spec, job.rng) for job in jobs]


EXECUTORS = {"sequential": Sequential}
