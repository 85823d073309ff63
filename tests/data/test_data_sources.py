"""Lookup, md5 checks, errors and format readers, on tiny files written by the tests.

Each test writes files in the original formats into a temporary mirror or cache
(see the ``isolated`` fixture) and points the md5 registry at them, so the real
lookup path (cache -> mirror -> download) is exercised end to end.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpress.cli import main
from fedpress.data import DatasetError, DatasetWarning, fetch, load, verify
from fedpress.data import sources as src
from fedpress.data.loaders import IDX_IMAGES_MAGIC, read_idx, read_libsvm

from .helpers import (
    add_bytes,
    add_symlink,
    corrupt_in_place,
    md5_of,
    write_cifar,
    write_idx,
    write_libsvm,
    write_tar_gz,
)

MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
CIFAR10_FILES = [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)] + [
    "cifar-10-batches-bin/test_batch.bin"
]
CIFAR100_FILES = ["cifar-100-binary/train.bin", "cifar-100-binary/test.bin"]


def point_registry_at(monkeypatch, name: str, folder: Path, **md5_overrides: str) -> None:
    """Replace the dataset's md5s by those of the files the test wrote into ``folder``."""
    source = src.SOURCES[name]
    files = tuple(
        dataclasses.replace(spec, md5=md5_overrides.get(spec.path) or md5_of(folder / spec.path))
        for spec in source.files
    )
    monkeypatch.setitem(src.SOURCES, name, dataclasses.replace(source, files=files))


def write_tiny_mnist(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return arrays


def write_tiny_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Six batches of 4 images; returns all images and labels in file order."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 24, dtype=np.uint8)
    for b, name in enumerate(CIFAR10_FILES):
        part = slice(4 * b, 4 * b + 4)
        write_cifar(folder / name, images[part], labels[part])
    return images, labels


def write_tiny_cifar100(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    out = {}
    for name, n in zip(CIFAR100_FILES, (6, 3), strict=True):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = rng.integers(0, 100, n, dtype=np.uint8)
        write_cifar(folder / name, images, fine // 5, fine)  # coarse byte first, then fine
        out[name] = fine
    return out


# --------------------------------------------------------------------------- loading


def test_tiny_mnist_loads_through_the_mirror(isolated, monkeypatch) -> None:
    arrays = write_tiny_mnist(isolated["mirror"] / "mnist")
    point_registry_at(monkeypatch, "mnist", isolated["mirror"] / "mnist")
    ds = load("mnist")
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    expected = (arrays["train-images-idx3-ubyte.gz"] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    raw = load("mnist", normalize=False)
    assert torch.equal(
        (raw.x_test[:, 0] * 255).round().to(torch.uint8),
        torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"]),
    )


def test_cache_is_preferred_and_a_corrupt_cache_copy_falls_back_to_mirror(isolated, monkeypatch) -> None:
    write_tiny_mnist(isolated["mirror"] / "mnist")
    shutil.copytree(isolated["mirror"] / "mnist", isolated["cache"] / "mnist")
    point_registry_at(monkeypatch, "mnist", isolated["mirror"] / "mnist")
    paths = src.resolve("mnist")
    assert all(p.parent == isolated["cache"] / "mnist" for p in paths.values())

    (isolated["cache"] / "mnist" / MNIST_FILES[0]).write_bytes(b"corrupted")
    paths = src.resolve("mnist")
    assert paths[MNIST_FILES[0]] == isolated["mirror"] / "mnist" / MNIST_FILES[0]


def test_md5_mismatch_names_the_file_every_location_and_the_fix(isolated, monkeypatch) -> None:
    folder = isolated["mirror"] / "mnist"
    write_tiny_mnist(folder)
    wrong = "0" * 32
    point_registry_at(monkeypatch, "mnist", folder, **{MNIST_FILES[1]: wrong})
    with pytest.raises(DatasetError) as info:
        load("mnist")
    message = str(info.value)
    assert MNIST_FILES[1] in message
    assert str(isolated["cache"] / "mnist" / MNIST_FILES[1]) in message
    assert f"{folder / MNIST_FILES[1]}: md5 mismatch (expected {wrong}, got " in message
    assert md5_of(folder / MNIST_FILES[1]) in message
    assert "FEDPRESS_MIRROR" in message and "to fix" in message


def test_missing_file_lists_every_place_looked(isolated) -> None:
    with pytest.raises(DatasetError) as info:
        load("mnist")
    message = str(info.value)
    first = MNIST_FILES[0]
    assert f"{isolated['cache'] / 'mnist' / first}: not found" in message
    assert f"{isolated['mirror'] / 'mnist' / first}: not found" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" + first in message
    assert "download failed (OSError: downloads are disabled in tests" in message
    assert "expected md5 f68b3c2dcbeaaa9fbdd348bbdeb94873" in message


def test_missing_file_without_mirror_says_the_mirror_is_not_set(isolated, monkeypatch) -> None:
    monkeypatch.delenv(src.ENV_MIRROR)
    with pytest.raises(DatasetError, match=r"\$FEDPRESS_MIRROR is not set"):
        load("mushrooms")


def test_download_lands_in_the_cache_once(isolated, monkeypatch) -> None:
    server = isolated["mirror"].parent / "server"
    write_tiny_mnist(server)
    point_registry_at(monkeypatch, "mnist", server)
    monkeypatch.delenv(src.ENV_MIRROR)
    calls = []

    def fake_download(url: str, dest: Path, timeout: float = 0) -> None:
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(server / url.rsplit("/", 1)[1], dest)

    monkeypatch.setattr(src, "download", fake_download)
    paths = fetch("mnist")
    assert [p.name for p in paths] == MNIST_FILES
    assert all(p.parent == isolated["cache"] / "mnist" for p in paths)
    assert len(calls) == 4
    assert load("mnist").x_train.shape == (12, 1, 28, 28)
    assert len(calls) == 4  # found in the cache the second time


def test_downloaded_file_with_wrong_md5_is_rejected_and_removed(isolated, monkeypatch) -> None:
    def bad_download(url: str, dest: Path, timeout: float = 0) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"<html>not the dataset</html>")

    monkeypatch.setattr(src, "download", bad_download)
    with pytest.raises(DatasetError, match="but md5 mismatch") as info:
        load("mushrooms")
    assert "removed" in str(info.value)
    assert not (isolated["cache"] / "mushrooms" / "mushrooms").exists()


def test_md5_results_are_remembered_until_the_file_changes(isolated, monkeypatch) -> None:
    path = isolated["mirror"] / "blob.bin"
    path.write_bytes(b"abc")
    hashed = []
    real_hash = src._hash_file
    monkeypatch.setattr(src, "_hash_file", lambda p: hashed.append(p) or real_hash(p))
    assert src.md5sum(path) == "900150983cd24fb0d6963f7d28e17f72"
    assert src.md5sum(path) == "900150983cd24fb0d6963f7d28e17f72"
    assert len(hashed) == 1
    assert (isolated["cache"] / src.MD5_SIDECAR).read_text().startswith("900150983cd24")
    path.write_bytes(b"abd")
    os.utime(path, ns=(1, 1))
    assert src.md5sum(path) == md5_of(path)
    assert len(hashed) == 2


# --------------------------------------------------------------------------- IDX format


def test_bad_idx_magic_is_a_clear_error(isolated, monkeypatch) -> None:
    folder = isolated["mirror"] / "mnist"
    write_tiny_mnist(folder)
    write_idx(folder / MNIST_FILES[0], np.zeros((2, 28, 28), np.uint8), magic=2049)
    point_registry_at(monkeypatch, "mnist", folder)
    with pytest.raises(DatasetError, match="bad IDX magic number 2049, expected 2051") as info:
        load("mnist")
    assert MNIST_FILES[0] in str(info.value)


def test_idx_body_that_disagrees_with_header_is_refused(tmp_path) -> None:
    path = tmp_path / "short.gz"
    header = (2051).to_bytes(4, "big") + np.asarray([3, 28, 28], ">u4").tobytes()
    path.write_bytes(gzip.compress(header + bytes(28 * 28 * 2)))
    with pytest.raises(DatasetError, match=r"dims \(3, 28, 28\)"):
        read_idx(path, IDX_IMAGES_MAGIC)


def test_idx_that_is_not_gzip_is_refused(tmp_path) -> None:
    path = tmp_path / "plain.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="not a readable gzip file"):
        read_idx(path, IDX_IMAGES_MAGIC)


# --------------------------------------------------------------------------- CIFAR


def test_tiny_cifar10_from_the_extracted_folder(isolated, monkeypatch) -> None:
    folder = isolated["mirror"] / "cifar10"
    images, labels = write_tiny_cifar10(folder)
    point_registry_at(monkeypatch, "cifar10", folder)
    ds = load("cifar10", normalize=False)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert torch.equal((ds.x_train * 255).round().to(torch.uint8), torch.from_numpy(images[:20]))
    assert ds.y_train.tolist() == labels[:20].tolist()
    assert ds.y_test.tolist() == labels[20:].tolist()


def test_tiny_cifar10_from_the_archive_is_extracted_into_the_cache(isolated, monkeypatch) -> None:
    staging = isolated["mirror"].parent / "staging"
    images, labels = write_tiny_cifar10(staging)
    archive = write_tar_gz(isolated["mirror"] / "cifar10" / "cifar-10-binary.tar.gz", staging, CIFAR10_FILES)
    point_registry_at(monkeypatch, "cifar10", staging)
    source = src.SOURCES["cifar10"]
    monkeypatch.setitem(
        src.SOURCES,
        "cifar10",
        dataclasses.replace(source, archive=dataclasses.replace(source.archive, md5=md5_of(archive))),
    )
    ds = load("cifar10", normalize=False)
    assert ds.y_train.tolist() == labels[:20].tolist()
    assert (isolated["cache"] / "cifar10" / CIFAR10_FILES[0]).is_file()
    assert torch.equal((ds.x_test * 255).round().to(torch.uint8), torch.from_numpy(images[20:]))
    rows = verify("cifar10")
    assert rows[0].file == "cifar-10-binary.tar.gz" and rows[0].ok is True
    assert all(r.ok is True for r in rows)


def test_archive_with_wrong_md5_is_reported(isolated) -> None:
    (isolated["mirror"] / "cifar10").mkdir()
    (isolated["mirror"] / "cifar10" / "cifar-10-binary.tar.gz").write_bytes(b"junk")
    with pytest.raises(DatasetError) as info:
        load("cifar10")
    message = str(info.value)
    assert "cifar-10-binary.tar.gz: md5 mismatch (expected c32a1d4ab5d03f1284b67883e8d87530" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz: download failed" in message


def test_extraction_writes_only_wanted_plain_files(tmp_path) -> None:
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_bytes(tar, "data/x.bin", b"x")
        add_bytes(tar, "../escape.txt", b"evil")
    dest = tmp_path / "out"
    src.extract_members(archive, ["data/x.bin"], dest)
    assert (dest / "data" / "x.bin").read_bytes() == b"x"
    assert not (tmp_path / "escape.txt").exists()

    with tarfile.open(archive, "w:gz") as tar:
        add_symlink(tar, "data/x.bin", "/etc/passwd")
    with pytest.raises(DatasetError, match="is not a plain file"):
        src.extract_members(archive, ["data/x.bin"], tmp_path / "out2")

    with tarfile.open(archive, "w:gz") as tar:
        add_bytes(tar, "data/other.bin", b"y")
    with pytest.raises(DatasetError, match="lacks expected members"):
        src.extract_members(archive, ["data/x.bin"], tmp_path / "out3")


def test_tiny_cifar100_uses_fine_labels_and_notes_the_missing_md5(isolated) -> None:
    folder = isolated["mirror"] / "cifar100"
    fine = write_tiny_cifar100(folder)
    with pytest.warns(DatasetWarning, match="no published md5"):
        ds = load("cifar100")
    assert ds.num_classes == 100
    assert ds.y_train.tolist() == fine[CIFAR100_FILES[0]].tolist()
    assert ds.y_test.tolist() == fine[CIFAR100_FILES[1]].tolist()
    rows = verify("cifar100")
    assert [(r.ok, r.note) for r in rows] == [(None, "no published md5; not checked")] * 2


def test_tiny_cifar100_beside_a_verified_archive_loads_silently(isolated, monkeypatch) -> None:
    folder = isolated["mirror"] / "cifar100"
    write_tiny_cifar100(folder)
    archive = write_tar_gz(folder / "cifar-100-binary.tar.gz", folder, CIFAR100_FILES)
    source = src.SOURCES["cifar100"]
    monkeypatch.setitem(
        src.SOURCES,
        "cifar100",
        dataclasses.replace(source, archive=dataclasses.replace(source.archive, md5=md5_of(archive))),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        assert load("cifar100").x_train.shape == (6, 3, 32, 32)
    assert all(r.ok is True for r in verify("cifar100"))


def test_cifar_file_of_partial_records_is_refused(isolated, monkeypatch) -> None:
    folder = isolated["mirror"] / "cifar10"
    write_tiny_cifar10(folder)
    with open(folder / CIFAR10_FILES[2], "ab") as f:
        f.write(b"\0" * 10)
    point_registry_at(monkeypatch, "cifar10", folder)
    with pytest.raises(DatasetError, match="not a whole number of 3073-byte CIFAR records"):
        load("cifar10")


# --------------------------------------------------------------------------- LIBSVM


def test_tiny_libsvm_mushrooms(isolated, monkeypatch) -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((7, 112)) < 0.2).astype(np.float32)
    raw_labels = np.array([1, 2, 2, 1, 2, 1, 1])
    folder = isolated["mirror"] / "mushrooms"
    write_libsvm(folder / "mushrooms", x, raw_labels)
    point_registry_at(monkeypatch, "mushrooms", folder)
    ds = load("mushrooms")
    assert torch.equal(ds.x_train, torch.from_numpy(x))
    assert ds.y_train.tolist() == [0, 1, 1, 0, 1, 0, 0]
    assert ds.num_classes == 2 and ds.x_test.shape == (0, 112)


def test_libsvm_reader_values_and_errors(tmp_path) -> None:
    path = tmp_path / "a.libsvm"
    path.write_text("-1 1:0.5 3:2 \n+1 2:1\n\n")
    x, y = read_libsvm(path)
    assert x.dtype == np.float32 and x.tolist() == [[0.5, 0, 2], [0, 1, 0]]
    assert y.tolist() == [-1, 1]
    path.write_text("1 1:1\n1 2:oops\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_libsvm(path)
    path.write_text("1 0:1\n")
    with pytest.raises(DatasetError, match="start at 1"):
        read_libsvm(path)


# --------------------------------------------------------------------------- registry


def test_unknown_dataset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*mnist.*mushrooms"):
        load("cifar11")


def test_registry_lists_every_loadable_dataset() -> None:
    assert src.list_datasets() == ["mnist", "fashion_mnist", "cifar10", "cifar100", "mushrooms"]
    assert src.SOURCES["cifar10"].archive.md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert src.SOURCES["cifar100"].archive.md5 == "03b5dce01913d631647c71ecec9e9cb8"
    assert src.SOURCES["mushrooms"].files[0].md5 == "2a52251de564d72e772b25211a84f5f8"


def test_verify_reports_mismatch_and_missing_without_downloading(isolated, monkeypatch) -> None:
    folder = isolated["mirror"] / "mnist"
    write_tiny_mnist(folder)
    point_registry_at(monkeypatch, "mnist", folder, **{MNIST_FILES[2]: "f" * 32})
    (folder / MNIST_FILES[3]).unlink()
    rows = {r.file: r for r in verify("mnist")}
    assert rows[MNIST_FILES[0]].ok is True
    assert rows[MNIST_FILES[2]].ok is False and "md5 mismatch" in rows[MNIST_FILES[2]].note
    missing = rows[MNIST_FILES[3]]
    assert missing.ok is False and missing.path is None
    assert str(folder / MNIST_FILES[3]) in missing.note


# --------------------------------------------------------------------------- verify reads the bytes


def write_tiny_mushrooms(folder: Path, monkeypatch) -> Path:
    """A 7-row LIBSVM ``mushrooms`` file in ``folder``, registered under its own md5."""
    rng = np.random.default_rng(4)
    x = (rng.random((7, 112)) < 0.2).astype(np.float32)
    path = write_libsvm(folder / "mushrooms", x, np.array([1, 2, 2, 1, 2, 1, 1]))
    point_registry_at(monkeypatch, "mushrooms", folder)
    return path


def test_verify_hashes_the_bytes_every_time(isolated, monkeypatch) -> None:
    path = write_tiny_mushrooms(isolated["mirror"] / "mushrooms", monkeypatch)
    hashed = []
    real_hash = src._hash_file
    monkeypatch.setattr(src, "_hash_file", lambda p: hashed.append(p) or real_hash(p))
    assert [r.ok for r in verify("mushrooms")] == [True]
    assert [r.ok for r in verify("mushrooms")] == [True]
    assert hashed == [path.resolve()] * 2  # the sidecar's remembered md5 was not trusted


def test_verify_reports_a_file_corrupted_in_place_with_its_mtime_restored(isolated, monkeypatch) -> None:
    path = write_tiny_mushrooms(isolated["mirror"] / "mushrooms", monkeypatch)
    good = md5_of(path)
    assert [(r.ok, r.path) for r in verify("mushrooms")] == [(True, path)]
    assert good in (isolated["cache"] / src.MD5_SIDECAR).read_text()  # the md5 is now remembered

    corrupt_in_place(path)
    [row] = verify("mushrooms")
    assert row.ok is False and row.path == path
    assert row.note == f"md5 mismatch (expected {good}, got {md5_of(path)})"


def test_datasets_verify_command_fails_on_a_file_corrupted_in_place(isolated, monkeypatch, capsys) -> None:
    path = write_tiny_mushrooms(isolated["mirror"] / "mushrooms", monkeypatch)
    assert main(["datasets", "verify", "mushrooms"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.split()[:3] == ["mushrooms", "mushrooms", "ok"]

    corrupt_in_place(path)
    assert main(["datasets", "verify", "mushrooms"]) != 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.split()[:4] == ["mushrooms", "mushrooms", "BAD", str(path)]
    assert "md5 mismatch" in line and md5_of(path) in line


def test_load_refuses_a_copy_that_verify_found_corrupted(isolated, monkeypatch) -> None:
    path = write_tiny_mushrooms(isolated["mirror"] / "mushrooms", monkeypatch)
    assert load("mushrooms").x_train.shape == (7, 112)  # its md5 is now remembered
    corrupt_in_place(path)
    [row] = verify("mushrooms")
    assert row.ok is False
    # the next load must not trust the md5 remembered before the damage (nor the decoded copy)
    with pytest.raises(DatasetError, match=f"{path}: md5 mismatch") as info:
        load("mushrooms")
    assert md5_of(path) in str(info.value)
