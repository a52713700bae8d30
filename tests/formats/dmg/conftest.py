"""Fixtures of the DMG tests: checking that images are never modified."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest


@pytest.fixture
def unchanged() -> Iterator[Callable[[Path], Path]]:
    """``unchanged(path)`` records a file; at the end its bytes and mtime must match."""
    watched: list[tuple[Path, bytes, int]] = []

    def watch(path: Path) -> Path:
        watched.append((path, path.read_bytes(), os.stat(path).st_mtime_ns))
        return path

    yield watch
    for path, data, mtime in watched:
        assert path.read_bytes() == data, f"{path} was modified"
        assert os.stat(path).st_mtime_ns == mtime, f"{path} had its time stamp changed"
