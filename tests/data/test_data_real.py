"""The loaders on the real original files (shared/datasets), checked against SOURCES.md."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpress.data import load, verify
from fedpress.data import sources as src
from fedpress.data.loaders import clear_cache, read_cifar_bin

from .helpers import real_mirror

MIRROR = real_mirror()
pytestmark = pytest.mark.skipif(
    MIRROR is None,
    reason="original dataset files not found: set FEDPRESS_MIRROR or provide ../shared/datasets",
)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _needs(dataset: str) -> None:
    if MIRROR is None or not (MIRROR / dataset).is_dir():
        pytest.skip(f"{dataset} is not in the mirror {MIRROR}")


@pytest.fixture(scope="module", autouse=True)
def real_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real mirror, an empty temporary cache (never ~/.cache), and no downloads."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(src.ENV_CACHE, str(tmp_path_factory.mktemp("cache")))
        if MIRROR is not None:
            mp.setenv(src.ENV_MIRROR, str(MIRROR))
        mp.setattr(src, "download", _refuse)
        yield MIRROR
    clear_cache()


def _refuse(url: str, dest: Path, timeout: float = 0) -> None:
    raise AssertionError(f"a test tried to download {url}")


def _counts(labels: torch.Tensor, k: int) -> list[int]:
    return np.bincount(labels.numpy(), minlength=k).tolist()


def _check_normalised_images(ds, n_train: int, n_test: int, shape: tuple[int, ...]) -> None:
    assert ds.x_train.shape == (n_train, *shape) and ds.x_test.shape == (n_test, *shape)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_test.dtype == torch.int64 and ds.input_shape == shape
    # Standardised with the train statistics: mean ~0, std ~1 per channel.
    per_channel = ds.x_train.transpose(0, 1).reshape(shape[0], -1)
    assert per_channel.mean(dim=1).abs().max() < 0.01
    assert (per_channel.std(dim=1) - 1).abs().max() < 0.01


def test_mnist_matches_published_counts_and_loads_fast() -> None:
    _needs("mnist")
    start = time.perf_counter()
    ds = load("mnist")
    assert time.perf_counter() - start < 5.0  # ~0.5 s measured; generous for slow machines
    _check_normalised_images(ds, 60000, 10000, (1, 28, 28))
    assert ds.num_classes == 10 and ds.name == "mnist"
    assert _counts(ds.y_train, 10) == MNIST_TRAIN_COUNTS
    assert _counts(ds.y_test, 10) == MNIST_TEST_COUNTS
    raw = ds.x_train * ds.std[0] + ds.mean[0]  # back to [0, 1]
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert load("mnist") is ds  # decoded once per process


def test_fashion_mnist_has_balanced_classes() -> None:
    _needs("fashion_mnist")
    ds = load("fashion_mnist")
    _check_normalised_images(ds, 60000, 10000, (1, 28, 28))
    assert _counts(ds.y_train, 10) == [6000] * 10
    assert _counts(ds.y_test, 10) == [1000] * 10


def test_cifar10_counts_and_first_pixels() -> None:
    _needs("cifar10")
    ds = load("cifar10")
    _check_normalised_images(ds, 50000, 10000, (3, 32, 32))
    assert _counts(ds.y_train, 10) == [5000] * 10
    assert _counts(ds.y_test, 10) == [1000] * 10
    mean, std = torch.tensor(ds.mean), torch.tensor(ds.std)
    pixels = ((ds.x_train[0] * std[:, None, None] + mean[:, None, None]) * 255).round()
    assert pixels[0, 0, :10].tolist() == [59, 43, 50, 68, 98, 119, 139, 145, 149, 149]
    test_pixels = ((ds.x_test[0] * std[:, None, None] + mean[:, None, None]) * 255).round()
    assert test_pixels[0, 0, :4].tolist() == [158, 159, 165, 166]


def test_cifar10_raw_batch_reader() -> None:
    _needs("cifar10")
    images, labels = read_cifar_bin(MIRROR / "cifar10/cifar-10-batches-bin/data_batch_1.bin")
    assert images.shape == (10000, 3, 32, 32) and images.dtype == np.uint8
    assert images[0, 0, 0, :4].tolist() == [59, 43, 50, 68]
    first_batch = [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    assert np.bincount(labels, minlength=10).tolist() == first_batch


def test_mushrooms_shape_and_labels() -> None:
    _needs("mushrooms")
    ds = load("mushrooms")
    assert ds.x_train.shape == (8124, 112) and ds.x_train.dtype == torch.float32
    assert _counts(ds.y_train, 2) == [3916, 4208]  # LIBSVM labels 1, 2 -> 0, 1
    assert set(ds.x_train.unique().tolist()) == {0.0, 1.0}
    assert (ds.x_train.sum(dim=1) == 21).all()  # 21 one-hot attributes per row
    assert (ds.x_train[:, 77] == 1).all()  # feature 78, veil-type = p
    assert ds.x_test.shape == (0, 112) and ds.input_shape == (112,)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "mushrooms"])
def test_verify_reports_every_mirror_file_ok(name: str) -> None:
    _needs(name)
    rows = verify(name)
    assert len(rows) == len(src.SOURCES[name].files)
    for file, path, ok, note in rows:
        assert ok is True, (file, path, note)
        assert path == MIRROR / name / file
