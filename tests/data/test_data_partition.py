"""Partitioners: true partitions, promised sizes, determinism, measured label skew, reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpress.data import Partition, partition, plot_summary, summary
from fedpress.data.partition import (
    as_generator,
    class_counts,
    contiguous,
    dirichlet,
    iid,
    lda_equal,
    power_law,
    shards,
)
from fedpress.rng import derive_numpy

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    """3000 samples, 300 per class, in shuffled order (like a real training set)."""
    y = np.repeat(np.arange(NUM_CLASSES), 300)
    return torch.from_numpy(np.random.default_rng(123).permutation(y))


def assert_true_partition(parts: Partition, n: int) -> None:
    assert isinstance(parts, Partition)
    for p in parts:
        assert p.dtype == torch.int64 and p.dim() == 1
        assert torch.equal(p, p.sort().values)
    every = parts.order
    assert every.numel() == n
    assert torch.equal(every.sort().values, torch.arange(n))


def classes_per_client(parts: Partition, labels: torch.Tensor) -> np.ndarray:
    return (class_counts(parts, labels, NUM_CLASSES) > 0).sum(axis=1)


PARTITIONS = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "lda_equal": {"alpha": 0.5},
    "shards": {"classes_per_client": 2},
    "power_law": {"alpha": 0.1},
}


@pytest.mark.parametrize("name", PARTITIONS)
def test_every_index_lands_on_exactly_one_client(name: str, labels: torch.Tensor) -> None:
    parts = partition(name, labels, 20, 7, **PARTITIONS[name])
    assert len(parts) == 20
    assert_true_partition(parts, len(labels))


@pytest.mark.parametrize("name", PARTITIONS)
def test_same_seed_same_split_other_seed_other_split(name: str, labels: torch.Tensor) -> None:
    def split(seed: int) -> Partition:
        return partition(name, labels, 20, seed, **PARTITIONS[name])

    first, again, other = split(1), split(1), split(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("name", PARTITIONS)
def test_global_random_state_is_not_used(name: str, labels: torch.Tensor) -> None:
    results = []
    for global_seed in (0, 99):
        np.random.seed(global_seed)  # noqa: NPY002 - proves the legacy global state is ignored
        torch.manual_seed(global_seed)
        results.append(partition(name, labels, 10, 5, **PARTITIONS[name]))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_int_seed_means_the_derived_partition_generator(labels: torch.Tensor) -> None:
    by_seed = dirichlet(labels, 10, 0.3, 42)
    by_generator = dirichlet(labels, 10, 0.3, derive_numpy(42, "partition"))
    assert all(torch.equal(a, b) for a, b in zip(by_seed, by_generator, strict=True))
    with pytest.raises(TypeError, match="numpy Generator or an int seed"):
        as_generator(torch.Generator())


def test_iid_sizes_differ_by_at_most_one() -> None:
    parts = iid(1003, 10, np.random.default_rng(0))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1003
    assert_true_partition(parts, 1003)


def test_dirichlet_small_alpha_gives_fewer_classes_than_large(labels: torch.Tensor) -> None:
    skewed = classes_per_client(dirichlet(labels, 20, 0.05, 0), labels)
    uniform = classes_per_client(dirichlet(labels, 20, 100.0, 0), labels)
    assert skewed.mean() < 4 < 9.5 <= uniform.mean()


def test_dirichlet_redraws_until_min_size_then_gives_up_clearly(labels: torch.Tensor) -> None:
    parts = dirichlet(labels, 30, 0.1, 3, min_size=20)
    assert min(len(p) for p in parts) >= 20
    assert_true_partition(parts, len(labels))
    with pytest.raises(ValueError, match=r"after 5 draws.*min_size=140.*raise alpha"):
        dirichlet(labels, 20, 0.01, 3, min_size=140, max_retries=5)
    with pytest.raises(ValueError, match="cannot give 20 clients 200 sample"):
        dirichlet(labels, 20, 1.0, 3, min_size=200)


def test_lda_equal_gives_equal_sizes_and_skews_with_small_alpha(labels: torch.Tensor) -> None:
    skewed = lda_equal(labels, 30, 0.05, 0)
    iid_like = lda_equal(labels, 30, 1000.0, 0)
    for parts in (skewed, iid_like):
        assert [len(p) for p in parts] == [100] * 30
        assert_true_partition(parts, len(labels))
    assert classes_per_client(skewed, labels).mean() < 5
    # alpha = 1000 is SparsyFed's "IID": clients see every class, about 10 of each. The
    # last clients get whatever is left once classes run out (as in Flower's original).
    counts = class_counts(iid_like, labels, NUM_CLASSES)[:20]
    assert (counts > 0).all() and np.abs(counts - 10).mean() < 4


def test_lda_equal_survives_exhausted_classes() -> None:
    """Few classes, tiny alpha: classes run out mid-client and must be renormalised away."""
    y = torch.tensor([0] * 50 + [1] * 5 + [2] * 45)
    parts = lda_equal(y, 10, 0.01, 1)
    assert [len(p) for p in parts] == [10] * 10
    assert_true_partition(parts, 100)


def test_lda_equal_requires_divisible_sizes(labels: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="3000 samples do not divide into 7 equal clients"):
        lda_equal(labels, 7, 1.0, 0)


def test_shards_give_exactly_k_classes_when_shards_align_with_classes() -> None:
    y = torch.from_numpy(np.random.default_rng(0).permutation(np.repeat(np.arange(20), 50)))
    parts = shards(y, 10, 2, 4)  # 20 shards of 50 = one class each
    assert_true_partition(parts, 1000)
    assert [len(p) for p in parts] == [100] * 10
    counts = class_counts(parts, y, 20)
    assert ((counts > 0).sum(axis=1) == 2).all()
    assert set(np.unique(counts)) == {0, 50}


def test_shards_cap_classes_per_client(labels: torch.Tensor) -> None:
    parts = shards(labels, 25, 3, 0)
    assert_true_partition(parts, len(labels))
    assert classes_per_client(parts, labels).max() <= 3 * 2  # a shard may straddle two classes


def test_power_law_seeds_every_shard_then_skews_quantity() -> None:
    parts = power_law(5000, 100, 0.1, 0)
    assert_true_partition(parts, 5000)
    for j, p in enumerate(parts):
        assert j in p.tolist()  # row j is shard j's first row (round robin)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 1 and sizes.max() > 10 * np.median(sizes)


def test_contiguous_slices_in_file_order() -> None:
    parts = contiguous(60000, 10, 600)
    assert [(int(p[0]), int(p[-1]), len(p)) for p in (parts[0], parts[1])] == [(0, 599, 600), (600, 1199, 600)]
    assert torch.equal(contiguous(10, 3)[2], torch.tensor([6, 7, 8]))
    with pytest.raises(ValueError, match="rows > 100 samples"):
        contiguous(100, 10, 11)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 400),
    clients=st.integers(1, 50),
    seed=st.integers(0, 2**32),
    alpha=st.floats(0.05, 5.0),
)
def test_iid_and_power_law_always_partition(n: int, clients: int, seed: int, alpha: float) -> None:
    if clients > n:
        with pytest.raises(ValueError, match="cannot give"):
            iid(n, clients, seed)
        return
    assert_true_partition(iid(n, clients, seed), n)
    assert_true_partition(power_law(n, clients, alpha, seed), n)


def test_dispatcher_names_allowed_partitioners_and_parameters(labels: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"unknown partitioner 'pareto'; allowed: iid, dirichlet"):
        partition("pareto", labels, 10, 0)
    with pytest.raises(ValueError, match=r"'dirichlet': missing parameter\(s\) \['alpha'\]"):
        partition("dirichlet", labels, 10, 0)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['beta'\]; it takes alpha"):
        partition("lda_equal", labels, 10, 0, alpha=1.0, beta=2)
    with pytest.raises(ValueError, match="'iid'.*it takes no parameters"):
        partition("iid", labels, 10, 0, alpha=1.0)
    with pytest.raises(ValueError, match="dirichlet: alpha must be a finite number > 0"):
        partition("dirichlet", labels, 10, 0, alpha=-1.0)
    assert len(partition("contiguous", labels, 10, 0, size=100)) == 10
    assert_true_partition(partition("iid", 50, 5, 0), 50)  # a count is enough for iid
    with pytest.raises(ValueError, match="shards: needs the training labels"):
        partition("shards", 50, 5, 0, classes_per_client=2)


def test_summary_table_has_counts_and_spread(labels: torch.Tensor) -> None:
    parts = lda_equal(labels, 30, 1000.0, 0)
    text = summary(parts, labels, NUM_CLASSES)
    lines = text.splitlines()
    assert lines[0].split() == ["client", "samples", "classes"]
    assert lines[1].split() == ["0", "100", "10"]
    assert "total: 30 clients, 3000 samples (3000 distinct of 3000)" in text
    assert "samples per client: min 100, median 100, max 100" in text
    short = summary(parts, labels, NUM_CLASSES, max_rows=4)
    assert "..." in short and len(short.splitlines()) == 1 + 5 + 3


def test_plot_summary_writes_a_png(labels: torch.Tensor, tmp_path) -> None:
    parts = dirichlet(labels, 12, 0.3, 0)
    path = plot_summary(parts, labels, NUM_CLASSES, tmp_path / "plots" / "split.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
