"""Where dataset files come from, and proof that they are the original files.

Every dataset is read from its publisher's original files. Each file is looked
for, in order, in

1. the cache, ``$FEDPRESS_DATA/<dataset>/`` (default ``~/.cache/fedpress``),
2. a local mirror of the original files, ``$FEDPRESS_MIRROR/<dataset>/``
   (for machines without internet; on the project's machines the Makefile
   points it at ``../shared/datasets``),
3. the publisher's URL, downloaded into the cache.

A copy is used only if its md5 equals the published one. Hashing a 180 MB file
on every run would dominate start-up, so results are remembered in a small
sidecar text file in the cache dir, keyed by path, size and mtime.

Only loading (`resolve`, `fetch`, hence `fedpress.data.load`) trusts that
sidecar, for speed: a file damaged in place with its size and mtime unchanged
(bit rot, a tool that restores timestamps, a write within the clock's
resolution) still loads until its sidecar entry is refreshed. `verify`
(``fedpress datasets verify``) is what a user runs to be sure, so it always
reads the bytes; it also writes the md5 it found into the sidecar, so damage
it reports is refused by the next load too.

CIFAR comes in its official *binary* version; either the extracted folder or
the official ``.tar.gz`` is accepted (fedpress never reads a pickle, not even
a dataset's).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import tempfile
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

ENV_CACHE = "FEDPRESS_DATA"
ENV_MIRROR = "FEDPRESS_MIRROR"
DEFAULT_CACHE = Path("~/.cache/fedpress")
DOWNLOAD_TIMEOUT_S = 60.0
MD5_SIDECAR = "md5sums.txt"


class DatasetError(RuntimeError):
    """A dataset file that is missing, corrupted or unreadable. The message says how to fix it."""


class DatasetWarning(UserWarning):
    """A file was accepted without an md5 check, because no published md5 exists for it."""


@dataclass(frozen=True)
class FileSpec:
    """One original file: its path inside the dataset folder, published md5 and URLs.

    ``md5`` is None when the publisher gives none (the extracted CIFAR-100 files);
    such a file is trusted when it comes from a verified archive, else accepted
    with a `DatasetWarning`.
    """

    path: str
    md5: str | None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArchiveSpec:
    """An official archive holding a dataset's files under the same relative paths."""

    name: str
    md5: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSource:
    """A dataset's original files (and archive, if its files ship in one)."""

    name: str
    title: str
    files: tuple[FileSpec, ...]
    archive: ArchiveSpec | None = None


class FileCheck(NamedTuple):
    """One row of `verify`: a file, the copy found (None if none), whether its md5 is right.

    ``ok`` is None when the file has no published md5 and no verified archive vouches for it.
    """

    file: str
    path: Path | None
    ok: bool | None
    note: str = ""


def _idx_files(base_urls: tuple[str, ...], md5s: dict[str, str]) -> tuple[FileSpec, ...]:
    """FileSpecs of IDX files that all live under each of the same base URLs."""
    return tuple(FileSpec(name, md5, tuple(base + name for base in base_urls)) for name, md5 in md5s.items())


_MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # the mirror torchvision uses
    "http://yann.lecun.com/exdb/mnist/",  # the original site, often unavailable
)
_FMNIST_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

SOURCES: dict[str, DatasetSource] = {
    "mnist": DatasetSource(
        "mnist",
        "MNIST handwritten digits (LeCun, Cortes, Burges)",
        _idx_files(
            _MNIST_URLS,
            {
                "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ),
    ),
    "fashion_mnist": DatasetSource(
        "fashion_mnist",
        "Fashion-MNIST (Xiao, Rasul, Vollgraf; Zalando Research)",
        _idx_files(
            _FMNIST_URLS,
            {
                "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ),
    ),
    "cifar10": DatasetSource(
        "cifar10",
        "CIFAR-10, binary version (Krizhevsky 2009)",
        tuple(
            FileSpec(f"cifar-10-batches-bin/{name}", md5)
            for name, md5 in {
                "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
                "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
                "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
                "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
                "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
                "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
            }.items()
        ),
        ArchiveSpec(
            "cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
            (_CIFAR_URL + "cifar-10-binary.tar.gz",),
        ),
    ),
    "cifar100": DatasetSource(
        "cifar100",
        "CIFAR-100, binary version (Krizhevsky 2009)",
        (
            FileSpec("cifar-100-binary/train.bin", None),
            FileSpec("cifar-100-binary/test.bin", None),
        ),
        ArchiveSpec(
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
            (_CIFAR_URL + "cifar-100-binary.tar.gz",),
        ),
    ),
    "mushrooms": DatasetSource(
        "mushrooms",
        "UCI Mushroom, LIBSVM binary-class version (Chang & Lin)",
        (
            FileSpec(
                "mushrooms",
                "2a52251de564d72e772b25211a84f5f8",
                ("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/mushrooms",),
            ),
        ),
    ),
}


def list_datasets() -> list[str]:
    """Names accepted by `load`, `fetch` and `verify`."""
    return list(SOURCES)


def get_source(name: str) -> DatasetSource:
    """The registry entry for ``name``; a ValueError lists the known names."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(SOURCES)}") from None


def cache_dir() -> Path:
    """``$FEDPRESS_DATA`` or ``~/.cache/fedpress``, read at call time so tests can redirect it."""
    return Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE).expanduser()


def mirror_dir() -> Path | None:
    """``$FEDPRESS_MIRROR``, or None when no mirror is configured."""
    value = os.environ.get(ENV_MIRROR)
    return Path(value).expanduser() if value else None


# --------------------------------------------------------------------------- md5


def _hash_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar_path() -> Path:
    return cache_dir() / MD5_SIDECAR


def _read_sidecar() -> dict[str, tuple[str, int, int]]:
    """Known md5s: absolute path -> (md5, size, mtime_ns). A damaged line is just skipped."""
    known: dict[str, tuple[str, int, int]] = {}
    try:
        text = _sidecar_path().read_text(encoding="utf-8")
    except OSError:
        return known
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit():
            known[parts[3]] = (parts[0], int(parts[1]), int(parts[2]))
    return known


def _write_sidecar(known: dict[str, tuple[str, int, int]]) -> None:
    """Atomic rewrite; a cache dir we cannot write to only costs speed, so errors are ignored."""
    target = _sidecar_path()
    lines = "".join(f"{md5}\t{size}\t{mtime}\t{p}\n" for p, (md5, size, mtime) in known.items())
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".md5sums-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(lines)
        os.replace(tmp, target)
    except OSError:
        pass


def md5sum(path: Path, *, trust_cache: bool = True) -> str:
    """md5 of ``path``, remembered in the cache's sidecar.

    With ``trust_cache`` (what loading uses, for start-up speed) a remembered md5
    is returned without reading the file while its size and mtime are unchanged,
    so damage that keeps both goes unseen. ``trust_cache=False`` (what `verify`
    uses) always hashes the bytes; either way the md5 found replaces the
    remembered one, so a later trusting call sees what the bytes really hold.
    """
    path = Path(path).resolve()
    st = path.stat()
    known = _read_sidecar()
    hit = known.get(str(path))
    if trust_cache and hit is not None and hit[1:] == (st.st_size, st.st_mtime_ns):
        return hit[0]
    digest = _hash_file(path)
    entry = (digest, st.st_size, st.st_mtime_ns)
    if hit != entry:
        known[str(path)] = entry
        _write_sidecar(known)
    return digest


# --------------------------------------------------------------------------- download


def download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` into ``dest`` through a ``.part`` file, so a broken download never looks whole.

    Raises whatever urllib raises (URLError, TimeoutError, ...); the caller records it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    print(f"fedpress: downloading {url} -> {dest}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


# --------------------------------------------------------------------------- lookup


def _candidates(source: DatasetSource, relpath: str) -> Iterator[Path]:
    """The places a file may already lie, in lookup order: cache, then mirror."""
    yield cache_dir() / source.name / relpath
    mirror = mirror_dir()
    if mirror is not None:
        yield mirror / source.name / relpath


def _check_copy(path: Path, md5: str | None, *, trust_cache: bool = True) -> str | None:
    """None if ``path`` is a good copy, else why not (recorded in the error message).

    ``trust_cache`` is passed to `md5sum`: True when loading, False for `verify`.
    """
    if not path.is_file():
        return "not found"
    if md5 is None:
        return None
    try:
        got = md5sum(path, trust_cache=trust_cache)
    except OSError as e:
        return f"unreadable ({e})"
    return None if got == md5 else f"md5 mismatch (expected {md5}, got {got})"


def _mirror_note() -> str:
    mirror = mirror_dir()
    if mirror is None:
        return f"${ENV_MIRROR} is not set, so no mirror was searched"
    return f"${ENV_MIRROR}={mirror}"


def _fix_hint(source: DatasetSource, relpath: str) -> str:
    where = cache_dir() / source.name / relpath
    archive = ""
    if source.archive is not None:
        folder = cache_dir() / source.name
        archive = f", or put the official archive {source.archive.name} in {folder}"
    return (
        f"to fix: set {ENV_MIRROR} to a folder that holds {source.name}/{relpath} "
        f"({_mirror_note()}), or place the file at {where}{archive} "
        f"(cache dir from ${ENV_CACHE}, default {DEFAULT_CACHE}), "
        "or run once on a machine with internet access so it is downloaded into the cache"
    )


def _error(source: DatasetSource, spec: FileSpec, tried: list[str]) -> DatasetError:
    md5 = f" (expected md5 {spec.md5})" if spec.md5 else " (no published md5)"
    lines = [f"{source.name}: no valid copy of file '{spec.path}'{md5}", "looked in:"]
    lines += [f"  {entry}" for entry in tried]
    lines.append(_fix_hint(source, spec.path))
    return DatasetError("\n".join(lines))


def _download_checked(urls: tuple[str, ...], dest: Path, md5: str, tried: list[str]) -> bool:
    """Try each URL; keep the file only if its md5 is right. Every failure goes into ``tried``."""
    for url in urls:
        try:
            download(url, dest)
        except Exception as e:  # any failure is reported, then the next URL is tried
            tried.append(f"{url}: download failed ({type(e).__name__}: {e})")
            continue
        problem = _check_copy(dest, md5)
        if problem is None:
            return True
        tried.append(f"{url}: downloaded to {dest} but {problem}; removed")
        dest.unlink(missing_ok=True)
    if not urls:
        tried.append("no download URL is known for this file")
    return False


class _Resolver:
    """Finds every file of one dataset, looking for (or downloading) its archive at most once."""

    def __init__(self, source: DatasetSource, allow_download: bool = True):
        self.source = source
        self.allow_download = allow_download
        self._local: Path | None = None
        self._local_tried: list[str] | None = None
        self._archive: Path | None = None
        self._archive_tried: list[str] | None = None
        self._extracted = False

    def file(self, spec: FileSpec) -> Path:
        tried: list[str] = []
        for path in _candidates(self.source, spec.path):
            problem = _check_copy(path, spec.md5)
            if problem is None:
                if spec.md5 is None:
                    self._warn_if_unvouched(path)
                return path
            tried.append(f"{path}: {problem}")
        if mirror_dir() is None:
            tried.append(f"(no mirror searched: ${ENV_MIRROR} is not set)")
        fallback = self._from_archive if self.source.archive is not None else self._download
        path = fallback(spec, tried)
        if path is None:
            raise _error(self.source, spec, tried)
        return path

    def _download(self, spec: FileSpec, tried: list[str]) -> Path | None:
        if not self.allow_download or spec.md5 is None:
            tried.append("download not attempted")
            return None
        dest = cache_dir() / self.source.name / spec.path
        return dest if _download_checked(spec.urls, dest, spec.md5, tried) else None

    def local_archive(self) -> Path | None:
        """A verified copy of the official archive in the cache or mirror, or None."""
        if self._local_tried is None:
            spec = self.source.archive
            assert spec is not None
            self._local_tried = []
            for path in _candidates(self.source, spec.name):
                problem = _check_copy(path, spec.md5)
                if problem is None:
                    self._local = path
                    break
                self._local_tried.append(f"{path}: {problem}")
        return self._local

    def archive(self) -> Path | None:
        """The verified archive, found locally or downloaded (failures listed in _archive_tried)."""
        if self._archive_tried is None:
            self._archive = self.local_archive()
            self._archive_tried = list(self._local_tried or [])
            spec = self.source.archive
            assert spec is not None
            if self._archive is None and self.allow_download:
                dest = cache_dir() / self.source.name / spec.name
                if _download_checked(spec.urls, dest, spec.md5, self._archive_tried):
                    self._archive = dest
            elif self._archive is None:
                self._archive_tried.append("download not attempted")
        return self._archive

    def _from_archive(self, spec: FileSpec, tried: list[str]) -> Path | None:
        archive = self.archive()
        tried.extend(self._archive_tried or [])
        if archive is None:
            return None
        dest_root = cache_dir() / self.source.name
        if not self._extracted:
            extract_members(archive, [f.path for f in self.source.files], dest_root)
            self._extracted = True
        path = dest_root / spec.path
        problem = _check_copy(path, spec.md5)
        if problem is not None:
            tried.append(f"{path} (extracted from {archive}): {problem}")
            return None
        return path

    def _warn_if_unvouched(self, path: Path) -> None:
        """A file without published md5 is fine next to a verified archive; else say so."""
        if self.source.archive is not None and self.local_archive() is not None:
            return
        archive = self.source.archive.name if self.source.archive else "archive"
        warnings.warn(
            f"{self.source.name}: {path} has no published md5 and no verified copy of "
            f"{archive} was found beside it, so it was accepted without an integrity check",
            DatasetWarning,
            stacklevel=2,
        )


def extract_members(archive: Path, members: list[str], dest: Path) -> None:
    """Extract exactly ``members`` (regular files) from a tar.gz into ``dest``.

    Only the named members are written, each checked to be a plain file whose
    target stays inside ``dest``: an archive cannot write elsewhere, create
    links or overwrite unrelated files.
    """
    wanted = set(members)
    dest_root = dest.resolve()
    found: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name not in wanted:
                    continue
                target = (dest_root / member.name).resolve()
                if not member.isfile() or not target.is_relative_to(dest_root):
                    raise DatasetError(f"{archive}: member {member.name!r} is not a plain file")
                _write_member(tar, member, target)
                found.add(member.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from e
    missing = sorted(wanted - found)
    if missing:
        raise DatasetError(f"{archive}: archive lacks expected members {missing}")


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    assert source is not None  # member.isfile() was checked
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with source, open(part, "wb") as out:
            while chunk := source.read(1 << 22):
                out.write(chunk)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


# --------------------------------------------------------------------------- public


def resolve(name: str, *, allow_download: bool = True) -> dict[str, Path]:
    """Verified local path of every file of dataset ``name`` (relative path -> path).

    Looks in the cache, then the mirror, then downloads (unless ``allow_download``
    is False). Raises `DatasetError` naming the file, every place looked and how to fix it.
    """
    resolver = _Resolver(get_source(name), allow_download)
    return {spec.path: resolver.file(spec) for spec in resolver.source.files}


def fetch(name: str) -> list[Path]:
    """Make sure every file of ``name`` is available and verified; download if needed."""
    return list(resolve(name).values())


def verify(name: str) -> list[FileCheck]:
    """Check the md5 of the copy of each file that `load` would use; never downloads.

    Every file is hashed from its bytes: unlike loading, `verify` never trusts
    the md5 remembered in the cache's sidecar for an unchanged size and mtime,
    since it is what a user runs to be sure the files are intact. The md5 found
    is written to the sidecar, so a mismatch reported here is also refused by
    the next `load` (which does trust the sidecar).

    One row per file, after a row for the official archive if a copy of it is
    present. A missing file gets ``path=None, ok=False``; a file with no
    published md5 gets ``ok=None`` unless a verified archive vouches for it.
    """
    source = get_source(name)
    rows: list[FileCheck] = []
    archive: Path | None = None
    if source.archive is not None:
        row = _verify_one(source, source.archive.name, source.archive.md5)
        if row.path is not None:
            rows.append(row)
            archive = row.path if row.ok else None
    for spec in source.files:
        row = _verify_one(source, spec.path, spec.md5)
        if archive is not None and row.path is None:
            row = FileCheck(spec.path, archive, True, "in the verified archive; extracted on load")
        elif archive is not None and row.ok is None:
            row = row._replace(ok=True, note="no published md5; official archive verified")
        rows.append(row)
    return rows


def _verify_one(source: DatasetSource, relpath: str, md5: str | None) -> FileCheck:
    """The first good copy in lookup order, else the first bad one, else 'not found'.

    Each copy's md5 is computed from its bytes (``trust_cache=False``).
    """
    looked: list[str] = []
    first_bad: FileCheck | None = None
    for path in _candidates(source, relpath):
        looked.append(str(path))
        problem = _check_copy(path, md5, trust_cache=False)
        if problem is None:
            if md5 is None:
                return FileCheck(relpath, path, None, "no published md5; not checked")
            return FileCheck(relpath, path, True)
        if problem != "not found" and first_bad is None:
            first_bad = FileCheck(relpath, path, False, problem)
    if first_bad is not None:
        return first_bad
    return FileCheck(relpath, None, False, "not found in: " + ", ".join(looked))
