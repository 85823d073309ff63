"""Partitions as CSR (issue 21): the same splits as the list-of-tensors partitioners gave, and
populations of 100,000+ clients (iid_replacement) with memory in num_clients · size."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from fedpress.config import from_dict
from fedpress.data import Partition, iid_replacement, partition, plot_summary, summary
from fedpress.data.partition import (
    PARTITIONERS,
    _draw_without_replacement,
    _labels_array,
    as_generator,
    class_counts,
)
from fedpress.extend import register_partitioner

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    """3003 samples over 10 classes, unevenly, in shuffled order: sizes do not divide evenly."""
    y = np.concatenate([np.repeat(np.arange(NUM_CLASSES), 300), [0, 3, 7]])
    return torch.from_numpy(np.random.default_rng(11).permutation(y))


# --------------------------------------------------------------------------- the old partitioners
# Verbatim copies of the list-returning partitioners before partitions became CSR: the
# reference that every built-in must still reproduce exactly (same seed, same indices).


def _to_tensors(groups):
    return [torch.from_numpy(np.sort(np.asarray(g, np.int64))) for g in groups]


def _split_by_assignment(assignment, num_clients):
    order = np.argsort(assignment, kind="stable")
    counts = np.bincount(assignment, minlength=num_clients)
    return np.split(order, np.cumsum(counts)[:-1])


def old_iid(n_samples, num_clients, rng):
    perm = as_generator(rng).permutation(n_samples)
    return _to_tensors(np.array_split(perm, num_clients))


def old_dirichlet(labels, num_clients, alpha, rng, min_size=1, max_retries=1000):
    y = _labels_array(labels)
    gen = as_generator(rng)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(max_retries):
        parts = [[] for _ in range(num_clients)]
        for members in by_class:
            shuffled = gen.permutation(members)
            proportions = gen.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
            for client, piece in enumerate(np.split(shuffled, cuts)):
                parts[client].append(piece)
        groups = [np.concatenate(p) for p in parts]
        if min(len(g) for g in groups) >= min_size:
            return _to_tensors(groups)
    raise AssertionError("the reference gave up")


def old_lda_equal(labels, num_clients, alpha, rng):
    y = _labels_array(labels)
    gen = as_generator(rng)
    classes = np.unique(y)
    pools = [gen.permutation(np.flatnonzero(y == c)) for c in classes]
    left = np.array([len(p) for p in pools])
    proportions = gen.dirichlet(np.full(len(classes), float(alpha)), size=num_clients)
    size = y.size // num_clients
    groups = []
    for client in range(num_clients):
        counts = _draw_without_replacement(  # unchanged by the CSR change
            proportions[client], size, left, gen)
        taken = [pool[k - n : k] for pool, k, n in zip(pools, left, counts, strict=True)]
        left -= counts
        groups.append(np.concatenate(taken))
    return _to_tensors(groups)


def old_shards(labels, num_clients, classes_per_client, rng):
    y = _labels_array(labels)
    k = classes_per_client
    gen = as_generator(rng)
    perm = gen.permutation(y.size)
    by_label = perm[np.argsort(y[perm], kind="stable")]
    pieces = np.array_split(by_label, num_clients * k)
    owners = gen.permutation(num_clients * k).reshape(num_clients, k)
    return _to_tensors([np.concatenate([pieces[s] for s in row]) for row in owners])


def old_power_law(n_samples, num_shards, alpha, rng):
    gen = as_generator(rng)
    weights = gen.power(alpha, size=num_shards)
    assignment = np.empty(n_samples, np.int64)
    assignment[:num_shards] = np.arange(num_shards)
    assignment[num_shards:] = gen.choice(num_shards, size=n_samples - num_shards, p=weights / weights.sum())
    return _to_tensors(_split_by_assignment(assignment, num_shards))


def old_contiguous(n_samples, num_clients, size=None):
    size = n_samples // num_clients if size is None else size
    return [torch.arange(size * c, size * (c + 1), dtype=torch.int64) for c in range(num_clients)]


def assert_same_split(parts: Partition, expected: list[torch.Tensor]) -> None:
    assert isinstance(parts, Partition) and len(parts) == len(expected)
    for c, (got, want) in enumerate(zip(parts, expected, strict=True)):
        assert got.dtype == want.dtype == torch.int64, c
        assert torch.equal(got, want), c
        assert torch.equal(parts[c], want), c


# (name, params, reference, whether it reads labels) over client counts that do and do not divide 3003
CASES = [
    ("iid", {}, lambda y, k, s: old_iid(len(y), k, s)),
    ("dirichlet", {"alpha": 0.5}, lambda y, k, s: old_dirichlet(y, k, 0.5, s)),
    ("dirichlet", {"alpha": 0.1, "min_size": 20}, lambda y, k, s: old_dirichlet(y, k, 0.1, s, min_size=20)),
    ("shards", {"classes_per_client": 2}, lambda y, k, s: old_shards(y, k, 2, s)),
    ("shards", {"classes_per_client": 3}, lambda y, k, s: old_shards(y, k, 3, s)),
    ("power_law", {"alpha": 0.1}, lambda y, k, s: old_power_law(len(y), k, 0.1, s)),
    ("contiguous", {"size": 40}, lambda y, k, s: old_contiguous(len(y), k, 40)),
    ("contiguous", {}, lambda y, k, s: old_contiguous(len(y), k)),
]


@pytest.mark.parametrize("clients", [1, 7, 20, 60])
@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("name,params,reference", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_builtin_gives_exactly_the_old_split(name, params, reference, clients, seed, labels) -> None:
    if name == "dirichlet" and clients * params.get("min_size", 1) * 3 > len(labels):
        pytest.skip("too many clients for min_size: the reference would redraw for long")
    parts = partition(name, labels, clients, seed, **params)
    assert_same_split(parts, reference(labels, clients, seed))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lda_equal_gives_exactly_the_old_split(seed: int) -> None:
    y = torch.from_numpy(np.random.default_rng(seed).permutation(np.repeat(np.arange(NUM_CLASSES), 300)))
    for alpha in (0.05, 1.0, 1000.0):
        assert_same_split(partition("lda_equal", y, 30, seed, alpha=alpha), old_lda_equal(y, 30, alpha, seed))
    exhausted = torch.tensor([0] * 50 + [1] * 5 + [2] * 45)  # classes run out mid-client
    assert_same_split(partition("lda_equal", exhausted, 10, 1, alpha=0.01), old_lda_equal(exhausted, 10, 0.01, 1))


# --------------------------------------------------------------------------- Partition itself


def test_from_groups_round_trips_and_keeps_each_groups_order() -> None:
    groups = [torch.tensor([5, 1, 9]), torch.tensor([], dtype=torch.int64), np.array([2, 2]), [7]]
    parts = Partition.from_groups(groups)
    assert len(parts) == 4 and parts.sizes().tolist() == [3, 0, 2, 1]
    assert [p.tolist() for p in parts] == [[5, 1, 9], [], [2, 2], [7]]
    assert [parts[c].tolist() for c in range(4)] == [[5, 1, 9], [], [2, 2], [7]]
    assert all(p.dtype == torch.int64 for p in parts)
    assert parts.order.tolist() == [5, 1, 9, 2, 2, 7] and parts.offsets.tolist() == [0, 3, 3, 5, 6]
    assert len(Partition.from_groups([])) == 0
    with pytest.raises(ValueError, match="client 1's indices must be a 1-D tensor of ints"):
        Partition.from_groups([torch.tensor([1]), torch.tensor([0.5])])


def test_from_assignment_equals_grouping_by_client(labels: torch.Tensor) -> None:
    rng = np.random.default_rng(4)
    for n, k in ((0, 3), (1, 1), (500, 7), (3003, 100)):
        assignment = rng.integers(0, k, n)
        expected = [torch.from_numpy(g.astype(np.int64)) for g in _split_by_assignment(assignment, k)]
        assert_same_split(Partition.from_assignment(assignment, k), expected)
    with pytest.raises(ValueError, match=r"client ids 0\.\.3, outside 0\.\.2"):
        Partition.from_assignment(np.array([0, 3]), 3)


def test_a_client_outside_the_population_is_an_index_error() -> None:
    parts = Partition.from_groups([[0, 1], [2]])
    for bad in (2, -1, 10**6):
        with pytest.raises(IndexError, match=rf"client {bad} is not in this partition of 2 clients \(0\.\.1\)"):
            parts[bad]
    with pytest.raises(TypeError, match="indexed by a client number, not slice"):
        parts[0:1]
    assert parts[np.int64(1)].tolist() == [2] and parts[torch.tensor(0)].tolist() == [0, 1]


def test_a_partition_is_frozen_and_checks_its_offsets() -> None:
    parts = Partition.from_groups([[0, 1], [2]])
    with pytest.raises(AttributeError):
        parts.order = torch.arange(3)  # type: ignore[misc]
    assert repr(parts) == "Partition(2 clients, 3 indices, sizes 1..2)"
    with pytest.raises(ValueError, match="must run from 0 to len"):
        Partition(torch.arange(3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="never decrease"):
        Partition(torch.arange(3), torch.tensor([0, 2, 1, 3]))
    with pytest.raises(ValueError, match="1-D int64"):
        Partition(torch.arange(3, dtype=torch.int32), torch.tensor([0, 3]))


def test_reports_take_a_partition_or_a_list(labels: torch.Tensor) -> None:
    parts = partition("dirichlet", labels, 12, 0, alpha=0.3)
    as_list = list(parts)
    expected = np.stack([np.bincount(labels.numpy()[p.numpy()], minlength=NUM_CLASSES) for p in as_list])
    assert np.array_equal(class_counts(parts, labels, NUM_CLASSES), expected)
    assert np.array_equal(class_counts(as_list, labels, NUM_CLASSES), expected)
    assert summary(parts, labels, NUM_CLASSES) == summary(as_list, labels, NUM_CLASSES)
    assert class_counts([], labels, NUM_CLASSES).shape == (0, NUM_CLASSES)


def test_many_clients_plot_as_stacked_areas(labels: torch.Tensor, tmp_path, monkeypatch) -> None:
    module = importlib.import_module("fedpress.data.partition")  # fedpress.data.partition is also the function
    monkeypatch.setattr(module, "MAX_BARS", 10)  # the population path without drawing 2000 clients
    path = plot_summary(partition("iid_replacement", labels, 50, 0, size=8), labels, NUM_CLASSES, tmp_path / "a.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def registry():
    """What a test registers is forgotten after it (the registry is the process's)."""
    saved = dict(PARTITIONERS)
    yield
    PARTITIONERS.clear()
    PARTITIONERS.update(saved)


def test_a_user_partitioners_list_becomes_a_partition_and_is_checked(labels: torch.Tensor, registry) -> None:
    @register_partitioner("strided", takes_labels=False)
    def strided(n_samples, num_clients, rng):
        return [torch.arange(c, n_samples, num_clients) for c in range(num_clients)]

    parts = partition("strided", labels, 2, 0)
    assert isinstance(parts, Partition) and parts[1].tolist() == list(range(1, len(labels), 2))
    register_partitioner("short", lambda n, k, rng: [torch.arange(n)], takes_labels=False)
    with pytest.raises(ValueError, match="short: made 1 clients, not num_clients = 2"):
        partition("short", labels, 2, 0)
    register_partitioner("far", lambda n, k, rng: [torch.tensor([n])], takes_labels=False)
    with pytest.raises(ValueError, match=r"far: gave indices outside the training set's rows 0\.\.3002"):
        partition("far", labels, 1, 0)


# --------------------------------------------------------------------------- iid_replacement


def test_iid_replacement_is_seeded_sorted_and_in_range() -> None:
    parts = partition("iid_replacement", 1000, 50, 7, size=8)
    again, other = iid_replacement(1000, 50, 8, 7), iid_replacement(1000, 50, 8, 8)
    assert torch.equal(parts.order, again.order) and not torch.equal(parts.order, other.order)
    assert parts.offsets.tolist() == list(range(0, 50 * 8 + 1, 8))
    assert parts.order.dtype == torch.int64 and parts.order.shape == (400,)
    assert int(parts.order.min()) >= 0 and int(parts.order.max()) < 1000
    for p in parts:
        assert p.shape == (8,) and torch.equal(p, p.sort().values)
    # a client may hold more rows than the training set (with replacement), and clients share rows
    assert iid_replacement(5, 2, 12, 0)[1].shape == (12,)


def test_iid_replacement_refuses_bad_sizes() -> None:
    for size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="iid_replacement: size"):
            iid_replacement(100, 10, size, 0)
    with pytest.raises(ValueError, match="iid_replacement: num_clients must be a positive int"):
        iid_replacement(100, 0, 4, 0)
    with pytest.raises(ValueError, match="needs at least one sample"):
        iid_replacement(0, 3, 4, 0)
    with pytest.raises(ValueError, match=r"'iid_replacement': missing parameter\(s\) \['size'\]"):
        partition("iid_replacement", 100, 10, 0)


def test_100000_clients_over_mnist_are_two_tensors_of_population_size() -> None:
    n, clients, size = 60_000, 100_000, 8
    parts = partition("iid_replacement", n, clients, 0, size=size)
    assert len(parts) == clients
    # memory: num_clients · size indices plus num_clients + 1 offsets, 8 bytes each
    assert parts.order.shape == (clients * size,) and parts.offsets.shape == (clients + 1,)
    assert parts.order.untyped_storage().nbytes() == clients * size * 8
    assert parts.offsets.untyped_storage().nbytes() == (clients + 1) * 8
    # a client's lookup is a view into the one order tensor, not a copy
    last = parts[clients - 1]
    assert last.shape == (size,) and last.untyped_storage().data_ptr() == parts.order.untyped_storage().data_ptr()
    # rows are shared: on average each of MNIST's rows is held by about 13 clients
    held = np.bincount(parts.order.numpy(), minlength=n)
    assert held.mean() == pytest.approx(clients * size / n) and 12 < held.mean() < 14


def test_a_config_may_ask_for_iid_replacement() -> None:
    raw = {
        "rounds": 1,
        "clients_per_round": 10,
        "data": {"dataset": "mnist", "num_clients": 100_000, "partition": "iid_replacement", "size": 8},
        "model": {"name": "mlp", "widths": [16]},
        "algorithm": {"name": "fedavg"},
    }
    cfg = from_dict(raw)
    assert (cfg.data.partition, cfg.data.num_clients, cfg.data.params) == ("iid_replacement", 100_000, {"size": 8})
    from fedpress.errors import ConfigError

    with pytest.raises(ConfigError, match="data.size is required by partition 'iid_replacement'"):
        from_dict({**raw, "data": {"dataset": "mnist", "num_clients": 100_000, "partition": "iid_replacement"}})


def test_the_runtimes_partition_of_the_default_config_is_the_old_one() -> None:
    from fedpress.rng import derive_numpy
    from fedpress.runtime.experiment import client_partition

    raw = {"rounds": 1, "data": {"dataset": "mnist", "num_clients": 20}, "model": {"name": "mlp", "widths": [16]}}
    cfg = from_dict(raw)
    assert (cfg.data.partition, cfg.data.params) == ("dirichlet", {"alpha": 0.5})
    y = torch.from_numpy(np.random.default_rng(5).integers(0, NUM_CLASSES, 6000))  # MNIST-like labels, no files
    parts = client_partition(cfg, y)
    assert isinstance(parts, Partition)
    expected = old_dirichlet(y, 20, 0.5, derive_numpy(cfg.seed, "partition"))
    for c in range(20):
        assert torch.equal(parts[c], expected[c])
