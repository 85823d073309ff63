"""Writers of tiny files in the datasets' original formats, and where the real files lie."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np

REAL_MIRROR_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def real_mirror() -> Path | None:
    """The folder of original dataset files: $FEDPRESS_MIRROR, else ../shared/datasets."""
    env = os.environ.get("FEDPRESS_MIRROR")
    for candidate in (Path(env) if env else None, REAL_MIRROR_DEFAULT):
        if candidate is not None and candidate.is_dir():
            return candidate
    return None


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def corrupt_in_place(path: Path, offset: int | None = None) -> None:
    """Flip one byte of ``path`` without changing its size, then restore its atime and mtime.

    This is the damage a size+mtime cache cannot see: bit rot, or a tool that
    rewrites a file and puts its timestamps back.
    """
    st = path.stat()
    offset = st.st_size // 2 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """Gzipped IDX of uint8: big-endian magic (0x0800 | ndim), dims, then the bytes."""
    array = np.ascontiguousarray(array, np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + np.asarray(array.shape, ">u4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + array.tobytes()))
    return path


def write_cifar(path: Path, images: np.ndarray, *label_columns: np.ndarray) -> Path:
    """CIFAR binary records: label byte(s), then 3072 planar pixel bytes per image."""
    n = images.shape[0]
    labels = np.stack([np.asarray(c, np.uint8) for c in label_columns], axis=1)
    records = np.concatenate([labels, images.reshape(n, -1).astype(np.uint8)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records.tobytes())
    return path


def write_libsvm(path: Path, x: np.ndarray, labels: np.ndarray) -> Path:
    """LIBSVM text as the mushrooms file has it: 1-based indices, a space before newline."""
    lines = []
    for row, label in zip(x, labels, strict=True):
        features = " ".join(f"{j + 1}:{row[j]:g}" for j in np.flatnonzero(row))
        lines.append(f"{label:g} {features} \n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def write_tar_gz(path: Path, root: Path, members: list[str]) -> Path:
    """A tar.gz holding ``root / m`` under the name ``m`` for each member."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in members:
            tar.add(root / name, arcname=name)
    return path


def add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
