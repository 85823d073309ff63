"""Readers of the datasets' original file formats, with numpy only (never a pickle).

`load(name)` finds the verified files (see `sources`), decodes them, and returns
a `Dataset` of in-memory tensors: a client is then just an index tensor into
``x_train`` (DESIGN rule 7). Decoded datasets are kept per process, so the
second `load` of the same files costs only the md5-sidecar lookup.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedpress.data.sources import DatasetError, get_source, resolve

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
CIFAR_PIXELS = 3 * 32 * 32


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset held in memory as tensors.

    ``x_*`` are float32, shaped ``N × *input_shape`` (images ``N×C×H×W``, scaled to
    [0, 1] then standardised per channel with ``mean``/``std``); ``y_*`` are int64
    class indices in ``[0, num_classes)``. The tensors may be shared with other
    `load` calls of the same process: treat them as read-only.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------- raw readers


def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: not a readable gzip file ({type(e).__name__}: {e})") from e


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Decode a gzipped IDX file (MNIST format) of unsigned bytes, checking its header.

    The header is a big-endian int32 magic (2051 images, 2049 labels; its low byte
    is the number of dimensions) followed by one int32 per dimension.
    """
    data = _gunzip(Path(path))
    if len(data) < 4:
        raise DatasetError(f"{path}: IDX file too short for a header ({len(data)} bytes)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
        raise DatasetError(f"{path}: bad IDX magic number {got}, expected {magic} (IDX {kind})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: IDX header truncated ({len(data)} < {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    body = len(data) - header
    if body != int(np.prod(dims)):
        raise DatasetError(
            f"{path}: IDX header says dims {dims} ({int(np.prod(dims))} bytes) but the body has {body} bytes"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_cifar_bin(path: Path, label_bytes: int = 1, label_index: int = 0):
    """Decode a CIFAR binary batch: records of label byte(s) then 3×32×32 planar pixels.

    CIFAR-10 has one label byte; CIFAR-100 has two (coarse, fine), so pass
    ``label_bytes=2, label_index=1`` for fine labels. Returns (uint8 N×3×32×32, uint8 N).
    """
    data = np.fromfile(path, np.uint8)
    record = label_bytes + CIFAR_PIXELS
    if data.size == 0 or data.size % record:
        raise DatasetError(f"{path}: size {data.size} bytes is not a whole number of {record}-byte CIFAR records")
    rows = data.reshape(-1, record)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32)
    return images, rows[:, label_index].copy()


def read_libsvm(path: Path, num_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode LIBSVM/svmlight text (``label idx:value ...``, 1-based indices) to dense arrays.

    Returns (float32 N×F features, float64 raw labels). ``num_features`` fixes F;
    by default it is the largest index in the file.
    """
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    labels: list[float] = []
    text = Path(path).read_text(encoding="ascii", errors="strict")
    for line_no, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        try:
            labels.append(float(tokens[0]))
            for token in tokens[1:]:
                index, _, value = token.partition(":")
                cols.append(int(index) - 1)
                vals.append(float(value))
                rows.append(len(labels) - 1)
        except ValueError as e:
            raise DatasetError(f"{path}, line {line_no}: not LIBSVM format ({e})") from e
    cols_arr = np.asarray(cols, np.int64)
    if cols_arr.size and cols_arr.min() < 0:
        raise DatasetError(f"{path}: LIBSVM feature indices must start at 1")
    width = int(cols_arr.max()) + 1 if cols_arr.size else 0
    if num_features is not None:
        if width > num_features:
            raise DatasetError(f"{path}: feature index {width} > expected {num_features}")
        width = num_features
    x = np.zeros((len(labels), width), np.float32)
    x[np.asarray(rows, np.int64), cols_arr] = vals
    return x, np.asarray(labels, np.float64)


def _labels_to_classes(raw: np.ndarray) -> np.ndarray:
    """Map the sorted distinct labels to 0..K-1 (mushrooms {1, 2} -> {0, 1}; ±1 -> {0, 1})."""
    return np.unique(raw, return_inverse=True)[1].astype(np.int64)


# --------------------------------------------------------------------------- datasets

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _idx_arrays(paths: Mapping[str, Path]) -> Arrays:
    """MNIST-format train/test images (N×1×28×28) and labels."""

    def images(split: str) -> np.ndarray:
        x = read_idx(paths[f"{split}-images-idx3-ubyte.gz"], IDX_IMAGES_MAGIC)
        return x[:, None]

    def labels(split: str) -> np.ndarray:
        return read_idx(paths[f"{split}-labels-idx1-ubyte.gz"], IDX_LABELS_MAGIC)

    return images("train"), labels("train"), images("t10k"), labels("t10k")


def _cifar10_arrays(paths: Mapping[str, Path]) -> Arrays:
    folder = "cifar-10-batches-bin"
    batches = [read_cifar_bin(paths[f"{folder}/data_batch_{i}.bin"]) for i in range(1, 6)]
    x_test, y_test = read_cifar_bin(paths[f"{folder}/test_batch.bin"])
    x_train = np.concatenate([x for x, _ in batches])
    y_train = np.concatenate([y for _, y in batches])
    return x_train, y_train, x_test, y_test


def _cifar100_arrays(paths: Mapping[str, Path]) -> Arrays:
    """CIFAR-100 records hold a coarse then a fine label byte; fedpress uses the 100 fine labels."""
    x_train, y_train = read_cifar_bin(paths["cifar-100-binary/train.bin"], 2, 1)
    x_test, y_test = read_cifar_bin(paths["cifar-100-binary/test.bin"], 2, 1)
    return x_train, y_train, x_test, y_test


def _mushrooms_arrays(paths: Mapping[str, Path]) -> Arrays:
    """All 8124 rows are training data: LIBSVM ships no test split, so the test split is empty.

    (QAFeL's logistic-regression experiment measures the training objective.)
    """
    x, raw = read_libsvm(paths["mushrooms"], num_features=112)
    y = _labels_to_classes(raw)
    return x, y, x[:0], y[:0]


@dataclass(frozen=True)
class _Recipe:
    """How to turn a dataset's files into tensors."""

    arrays: Callable[[Mapping[str, Path]], Arrays]
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] = ()  # per channel, on the [0, 1] scale; () = features used as-is
    std: tuple[float, ...] = ()


# Train-set statistics: MNIST/Fashion-MNIST/CIFAR-100 as commonly published;
# CIFAR-10 as measured on the official files (shared/datasets/SOURCES.md).
RECIPES: dict[str, _Recipe] = {
    "mnist": _Recipe(_idx_arrays, 10, (1, 28, 28), (0.1307,), (0.3081,)),
    "fashion_mnist": _Recipe(_idx_arrays, 10, (1, 28, 28), (0.2860,), (0.3530,)),
    "cifar10": _Recipe(_cifar10_arrays, 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Recipe(_cifar100_arrays, 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mushrooms": _Recipe(_mushrooms_arrays, 2, (112,)),
}


def _features(x: np.ndarray, recipe: _Recipe, normalize: bool) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], then (x - mean) / std per channel; features as float32."""
    if x.dtype != np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x, np.float32))
    # np.require copies only a read-only or strided array (torch wants writable memory).
    out = torch.from_numpy(np.require(x, requirements=["C", "W"])).to(torch.float32).div_(255.0)
    if normalize and recipe.mean:
        shape = (1, len(recipe.mean)) + (1,) * (out.dim() - 2)
        out.sub_(torch.tensor(recipe.mean).view(shape)).div_(torch.tensor(recipe.std).view(shape))
    return out


def _targets(y: np.ndarray, recipe: _Recipe, path_hint: str) -> torch.Tensor:
    labels = torch.from_numpy(y.astype(np.int64))
    if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < recipe.num_classes):
        raise DatasetError(
            f"{path_hint}: labels outside [0, {recipe.num_classes}): min {int(labels.min())}, max {int(labels.max())}"
        )
    return labels


def _check_shape(x: np.ndarray, recipe: _Recipe, name: str, split: str, n_labels: int) -> None:
    if tuple(x.shape[1:]) != recipe.input_shape or x.shape[0] != n_labels:
        raise DatasetError(
            f"{name} {split}: {x.shape[0]} inputs of shape {tuple(x.shape[1:])} and {n_labels} "
            f"labels; expected equal counts of shape {recipe.input_shape}"
        )


@functools.lru_cache(maxsize=4)
def _build(name: str, normalize: bool, files: tuple[tuple[str, str, int, int], ...]) -> Dataset:
    """Decode once per process; ``files`` (path, size, mtime) keys the cache to the exact copies."""
    recipe = RECIPES[name]
    paths = {rel: Path(path) for rel, path, _, _ in files}
    x_train, y_train, x_test, y_test = recipe.arrays(paths)
    _check_shape(x_train, recipe, name, "train", len(y_train))
    _check_shape(x_test, recipe, name, "test", len(y_test))
    hint = f"{name} ({', '.join(str(p) for p in paths.values())})"
    return Dataset(
        x_train=_features(x_train, recipe, normalize),
        y_train=_targets(y_train, recipe, hint),
        x_test=_features(x_test, recipe, normalize),
        y_test=_targets(y_test, recipe, hint),
        num_classes=recipe.num_classes,
        name=name,
        input_shape=recipe.input_shape,
        mean=recipe.mean if normalize else (),
        std=recipe.std if normalize else (),
    )


# datasets registered by `fedpress.register_dataset`: name -> loader(normalize) -> Dataset
CUSTOM: dict[str, Callable[[bool], Dataset]] = {}


def dataset_names() -> list[str]:
    """Every name `load` accepts: the datasets read from files, then the registered ones."""
    from fedpress.data.sources import list_datasets

    return [*list_datasets(), *CUSTOM]


def load(name: str, *, normalize: bool = True) -> Dataset:
    """Load dataset ``name`` ("mnist", "fashion_mnist", "cifar10", "cifar100", "mushrooms",
    or one registered with `fedpress.register_dataset`).

    Files come from the cache, the mirror or a download, each md5-checked (see
    `fedpress.data.sources`). ``normalize=False`` keeps images on the [0, 1] scale.
    """
    if name in CUSTOM:
        ds = CUSTOM[name](normalize)
        if not isinstance(ds, Dataset):
            raise ValueError(f"dataset {name!r}: its registered loader returned a {type(ds).__name__}, "
                             f"not a Dataset (see fedpress.dataset_from)")
        return ds
    get_source(name)  # a clear ValueError for an unknown name
    if name not in RECIPES:
        readable = ", ".join(RECIPES)
        raise ValueError(f"dataset {name!r} has files but no reader; readable: {readable}")
    paths = resolve(name)
    stamps = []
    for rel, path in sorted(paths.items()):
        st = path.stat()
        stamps.append((rel, str(path.resolve()), st.st_size, st.st_mtime_ns))
    return _build(name, normalize, tuple(stamps))


def clear_cache() -> None:
    """Forget the decoded datasets of this process (frees their memory)."""
    _build.cache_clear()
