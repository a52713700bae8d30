"""Which formats take part in which operation tests.

A format joins an operation's tests as soon as its backend implements the hooks
the operation needs (see ``vdgui.engine.formats.base.Image``), so a backend that
gains a hook is tested without touching the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from vdgui.engine import backends
from vdgui.engine.formats.base import Image
from vdgui.engine.registry import backend_class
from vdgui.engine.types import Capability

#: Small allocation units, so a few MiB hold many blocks.
SMALL_UNITS = {
    "VDI": {"AllocationBlockSize": "256K", "DataAlignment": "512"},
    "QCOW2": {"cluster_size": "4096"},
    "QED": {"cluster_size": "16384", "table_size": "1"},
    "QCOW": {"cluster_size": "16384"},
    "VHD": {"BlockSize": "262144"},
    "VHDX": {"block_size": "1M"},
    "Parallels": {"cluster_size": "65536"},
    # 64 KiB grains (the format's only size); zeroed-grain entries, so that compaction
    # and discard mark zero grains rather than keep them.
    "VMDK": {"ZeroedGrain": "1"},
}


@dataclass(frozen=True)
class Fmt:
    name: str
    ext: str
    config: dict = field(default_factory=dict, hash=False, compare=False)

    def __str__(self) -> str:
        return self.name


def _implements(cls: type[Image], *names: str) -> bool:
    return all(getattr(cls, name) is not getattr(Image, name) for name in names)


def _formats(predicate) -> list[Fmt]:
    out = []
    for info in backends():
        cls = backend_class(info.name)
        if info.has(Capability.CREATE_DYNAMIC) and predicate(info, cls):
            out.append(Fmt(info.name, info.extensions[0][0], SMALL_UNITS.get(info.name, {})))
    return out


def with_diffs(extra=lambda info, cls: True) -> list[Fmt]:
    """Dynamic formats that can be differencing images."""
    return _formats(lambda info, cls: info.has(Capability.DIFF) and extra(info, cls))


def compactable(diffs: bool = False) -> list[Fmt]:
    """Formats that can be compacted (``diffs``: and be differencing images)."""
    return _formats(lambda info, cls: _implements(cls, "unmap", "pack")
                    and (not diffs or info.has(Capability.DIFF)))


def resizable() -> list[Fmt]:
    return _formats(lambda info, cls: _implements(cls, "resize"))


def discardable() -> list[Fmt]:
    """Formats that can discard, as differencing images."""
    return _formats(lambda info, cls: info.has(Capability.DISCARD)
                    and info.has(Capability.DIFF) and _implements(cls, "unmap", "pack"))


def mergeable() -> list[Fmt]:
    """Formats whose differencing images can be re-linked (merge, rebase): they
    implement ``set_parent``, or store no parent path (so the default one serves)."""
    return with_diffs(lambda info, cls: _implements(cls, "set_parent")
                      or not _implements(cls, "parent_filename"))


def params(formats: list[Fmt]) -> list:
    return [pytest.param(f, id=f.name) for f in formats]
