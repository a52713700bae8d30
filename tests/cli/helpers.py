"""Helpers for the ``vdimg`` tests: results of a run, images built through the engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vdgui.engine import Disk, ImageFlags, OpenFlags, open_chain


@dataclass
class Result:
    rc: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()

    def assert_error(self, rc: int, *needles: str) -> None:
        """Failed with ``rc`` and exactly one ``vdimg: error:`` line containing ``needles``."""
        assert self.rc == rc, (self.rc, self.err)
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("vdimg: error: "), self.err
        assert "Traceback" not in self.err
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])


Runner = Callable[..., Result]


def make_image(path: Path, size: int = 4 << 20, backend: str = "VDI",
               data: dict[int, bytes] | None = None,
               flags: ImageFlags = ImageFlags.NONE) -> Path:
    """A new base image holding ``data`` (offset -> bytes)."""
    with Disk() as disk:
        disk.create_base(path, size, backend, flags)
        for offset, chunk in (data or {}).items():
            disk.write(offset, chunk)
        disk.flush()
    return path


def make_diff(parent: Path, path: Path, data: dict[int, bytes] | None = None) -> Path:
    """A VDI differencing image on top of ``parent``'s chain, holding ``data``."""
    with open_chain(parent, OpenFlags.READONLY) as disk:
        disk.create_diff(path, "VDI")
        for offset, chunk in (data or {}).items():
            disk.write(offset, chunk)
        disk.flush()
    return path


def content(path: Path, backend: str | None = None) -> bytes:
    """The whole virtual content of ``path``'s chain, read through the engine."""
    with open_chain(path, OpenFlags.READONLY, backend=backend) as disk:
        return disk.read(0, disk.size)


def snapshot(*paths: Path) -> dict[Path, tuple[bytes, int]]:
    """Bytes and modification time of files, to prove nothing changed."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}
