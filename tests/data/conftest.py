"""Shared fixture: an isolated cache and mirror per test, with downloads disabled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedpress.data import loaders, sources


def _no_download(url: str, dest: Path, timeout: float = 0) -> None:
    raise OSError(f"downloads are disabled in tests ({url})")


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """Fresh empty cache and mirror dirs, downloads disabled, decoded-dataset cache cleared."""
    cache, mirror = tmp_path / "cache", tmp_path / "mirror"
    cache.mkdir()
    mirror.mkdir()
    monkeypatch.setenv(sources.ENV_CACHE, str(cache))
    monkeypatch.setenv(sources.ENV_MIRROR, str(mirror))
    monkeypatch.setattr(sources, "download", _no_download)
    loaders.clear_cache()
    yield {"cache": cache, "mirror": mirror}
    loaders.clear_cache()
