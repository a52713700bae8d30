"""``VDRepair``: find what is wrong with an image, and fix what can be fixed.

A check never changes a byte: the file is opened read-only.  Its result is a
:class:`RepairReport`, a list of :class:`~vdgui.engine.findings.Finding` (severity,
what, where, and the fix a repair would apply).  A repair applies exactly the
reported fixes (those that have one), in one transaction per file (see
``Storage.transaction``), so a crash leaves the image as it was or repaired; then
it checks again and reports what remains.

Backends implement ``check(io, path, repair, progress) -> list[Finding]`` as a
class method working on the file itself (a damaged image may be one the normal
open refuses).  On top of that, :func:`repair` checks what only the chain can
tell: a differencing image whose parent no longer matches.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import registry
from ..chain import find_parent
from ..errors import NotSupported, VDError
from ..io import StorageProvider, default_provider
from ..progress import Progress, part, report
from ..findings import ERROR, WARNING, Finding
from ..types import NIL_UUID, DiskType, OpenFlags, RepairFlags

@dataclass
class RepairReport:
    """The outcome of a check or a repair (``vdimg check/repair --json``)."""

    path: str
    format: str
    problems: list[Finding] = field(default_factory=list)
    repaired: bool = False
    #: After a repair: what was found (and fixed) before it.
    fixed: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def leaked_bytes(self) -> int:
        return sum(p.leaked_bytes for p in self.problems)

    @property
    def repairable(self) -> bool:
        return all(p.fix for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        def finding(p: Finding) -> dict[str, Any]:
            return {k: v for k, v in asdict(p).items() if k != "leaked_bytes"}
        return {"path": self.path, "format": self.format, "clean": self.clean,
                "problems": [finding(p) for p in self.problems],
                "repaired": self.repaired, "leaked_bytes": self.leaked_bytes}


def repair(path: str | os.PathLike[str], backend: str | None = None,
           flags: RepairFlags = RepairFlags.NONE, io: StorageProvider | None = None,
           progress: Progress | None = None,
           search_paths: tuple[str, ...] = ()) -> RepairReport:
    """``VDRepair``: check (``RepairFlags.DRY_RUN``) or repair the image at ``path``."""
    path = os.fspath(path)
    io = io or default_provider()
    if backend is None:
        backend, _ = registry.probe(path, DiskType.INVALID, io)
    cls = registry.backend_class(backend)
    check = getattr(cls, "check", None)
    if check is None:
        raise NotSupported(f"the {cls.info.name} format has no check or repair", path,
                           status="VERR_VD_IMAGE_REPAIR_NOT_SUPPORTED")
    dry_run = bool(flags & RepairFlags.DRY_RUN)
    result = RepairReport(path, cls.info.name)
    report(progress, 0, 1, "checking")
    found = (check(io, path, False, part(progress, 0, 0.3))
             + _chain_findings(path, cls, io, search_paths))
    if dry_run or not any(p.fix for p in found):
        result.problems = found
        report(progress, 1, 1, "done")
        return result
    report(progress, 3, 10, "repairing")
    check(io, path, True, part(progress, 0.3, 0.8))
    result.fixed = [p for p in found if p.fix]
    result.repaired = True
    result.problems = (check(io, path, False, part(progress, 0.8, 1))
                       + _chain_findings(path, cls, io, search_paths))
    report(progress, 1, 1, "done")
    return result


def _chain_findings(path: str, cls: type, io: StorageProvider,
                    search_paths: tuple[str, ...]) -> list[Finding]:
    """A differencing image whose parent cannot be found or does not match."""
    try:
        image = cls.open(io, path, OpenFlags.READONLY | OpenFlags.INFO, DiskType.INVALID)
    except VDError:
        return []  # the format's own check reports why it does not open
    try:
        try:
            parent_uuid = image.parent_uuid
        except NotSupported:
            parent_uuid = None
        if (parent_uuid in (None, NIL_UUID)) and not image.parent_filename:
            return []
        try:
            parent_path = find_parent(image, search_paths, io)
        except VDError as exc:
            return [Finding(ERROR, f"the parent image cannot be found: {exc.message}; if "
                                   f"it was moved or copied, re-link it (vdimg rebase "
                                   f"--unsafe)", None, None)]
    finally:
        image.close()
    if parent_path is None or parent_uuid in (None, NIL_UUID):
        return []
    try:
        parent_backend, _ = registry.probe(parent_path, DiskType.INVALID, io)
        parent = registry.backend_class(parent_backend).open(
            io, parent_path, OpenFlags.READONLY | OpenFlags.INFO, DiskType.INVALID)
    except VDError as exc:
        return [Finding(WARNING, f"the parent image {parent_path} cannot be opened: "
                                 f"{exc.message}", None, None)]
    try:
        actual = parent.uuid
    except NotSupported:
        return []
    finally:
        parent.close()
    if actual != parent_uuid:
        return [Finding(ERROR, f"the parent UUID stored here ({parent_uuid}) does not match "
                               f"the parent image {parent_path} (UUID {actual}); if it is "
                               f"the right parent, re-link it (vdimg rebase --unsafe)", None,
                        None)]
    return []
