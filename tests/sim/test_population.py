"""Populations larger than the dataset (issue 21): O(k) sampling, a 100,000-client run on
the disk store, and its per-round work bounded by the clients sampled."""

import math
import sqlite3

import torch

from fedpress.rng import derive
from fedpress.runtime.store import DATABASE
from fedpress.sim import run
from fedpress.sim.rounds import PERMUTATION_LIMIT, floyd_sample, sample_clients
from tests.sim.conftest import tiny_config, with_overrides
from tests.sim.test_run import rows


def population_config(num_clients: int, **overrides):
    """tiny_config's run over `num_clients` clients of 4 rows each, drawn with replacement."""
    raw = {"name": "population", "seed": 3, "rounds": 4, "clients_per_round": 5, "eval_every": 2,
           "checkpoint_every": 2,
           "data": {"dataset": "mnist", "num_clients": num_clients, "partition": "iid_replacement", "size": 4},
           "model": {"name": "mlp", "widths": [32]}, "train": {"batch_size": 4, "lr": 0.1},
           "algorithm": {"name": "topk_ef", "ratio": 0.1}}
    return with_overrides(raw, overrides)


def test_floyd_draws_k_distinct_clients_in_range_and_repeats_by_seed():
    for n, k in [(10, 10), (10, 1), (1_000_000, 100), (70_000, 7)]:
        a = floyd_sample(n, k, derive(0, "sample", 3))
        assert len(a) == k and all(0 <= c < n for c in a)
        assert a == floyd_sample(n, k, derive(0, "sample", 3))
    assert floyd_sample(1_000_000, 100, derive(0, "sample", 3)) != floyd_sample(1_000_000, 100, derive(0, "sample", 4))


def test_floyd_is_uniform_over_the_population():
    """Each of n = 20 clients is drawn k/n of the time: a chi-square test over 20,000 draws of 5."""
    n, k, trials = 20, 5, 20_000
    counts = torch.zeros(n)
    for t in range(trials):
        counts[list(floyd_sample(n, k, derive(1, "floyd", t)))] += 1
    expected = trials * k / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.8  # the 0.999 quantile of chi-square with 19 degrees of freedom


def test_populations_above_the_limit_are_sampled_by_floyd_and_below_it_by_the_permutation_as_before():
    small = tiny_config(**{"data.num_clients": PERMUTATION_LIMIT})
    perm = torch.randperm(PERMUTATION_LIMIT, generator=derive(small.seed, "sample", 2))
    assert sample_clients(small, 2) == tuple(sorted(perm[: small.clients_per_round].tolist()))
    big = population_config(10**7)
    assert sample_clients(big, 2) == tuple(sorted(floyd_sample(10**7, big.clients_per_round,
                                                               derive(big.seed, "sample", 2))))


def test_floyd_gives_every_subset_the_same_chance():
    """All C(6, 3) = 20 subsets over 40,000 draws: a chi-square test with 19 degrees of freedom."""
    from itertools import combinations

    subsets = {frozenset(c): 0 for c in combinations(range(6), 3)}
    trials = 40_000
    for t in range(trials):
        subsets[frozenset(floyd_sample(6, 3, derive(2, "floyd", t)))] += 1
    expected = trials / len(subsets)
    assert sum((n - expected) ** 2 / expected for n in subsets.values()) < 43.8  # 0.999 quantile


class NoScans(dict):
    """A client store that refuses to be scanned: a round may only look clients up."""

    def __iter__(self):
        raise AssertionError("a round iterated the whole client store")

    def __len__(self):
        raise AssertionError("a round took the size of the whole client store")

    def keys(self):
        raise AssertionError("a round listed the whole client store")

    items = values = keys


def test_a_round_touches_the_store_only_for_its_sampled_clients(synthetic):
    from fedpress.runtime.executor import Sequential
    from fedpress.sim import run_round
    from fedpress.sim.rounds import fresh, setup

    exp = setup(population_config(100_000, rounds=6))
    p = fresh(exp, NoScans())
    for t in range(6):
        run_round(exp, p, Sequential(), t)
    assert set(dict.keys(p.clients)) == {c for t in range(6) for c in sample_clients(exp.config, t)}


def test_a_100000_client_run_on_disk_keeps_a_state_for_each_sampled_client_only(tmp_path, synthetic):
    cfg = population_config(100_000, **{"client_state.store": "disk"})
    run(cfg, tmp_path / "run", progress=False)
    sampled = {c for t in range(4) for c in sample_clients(cfg, t)}
    db = sqlite3.connect(tmp_path / "run" / DATABASE)
    assert {c for (c,) in db.execute("SELECT client FROM states")} == sampled
    metrics = rows(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 4 and all(r["clients"] == "5" for r in metrics)
    assert math.isfinite(float(metrics[-1]["test_accuracy"]))
