"""Feeding hostile bytes to every probe/open/read path, under fixed bounds.

``exercise(files, top)`` places the files in a :class:`MemoryProvider` (so any
attempt to write is seen), then probes, opens the chain read-only and reads it:
the whole disk when small, otherwise samples; walks its map; dumps it.  The only
acceptable outcomes are a correct run or a :class:`VDError`.  It returns what
happened, and raises AssertionError for anything else: another exception type, a
write to any file, memory use past :data:`MEMORY_LIMIT`, or a run past
:data:`TIME_LIMIT` seconds.
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass

from vdgui.engine import VDError, open_chain, probe
from vdgui.engine.io import MemoryProvider
from vdgui.engine.types import OpenFlags

#: Python-level allocations one hostile input may cause (tracemalloc peak).
MEMORY_LIMIT = 96 << 20
#: Wall-clock seconds one input may take.
TIME_LIMIT = 10.0
#: Read at most this much of a disk, in pieces spread over it.
READ_BUDGET = 8 << 20
MAX_MAP_EXTENTS = 20000


@dataclass
class Outcome:
    error: str | None      # the VDError's status, or None when everything worked
    message: str
    seconds: float
    peak: int


def exercise(files: dict[str, bytes], top: str) -> Outcome:
    """Run every read path over ``files`` (path -> content) with ``top`` as the image."""
    io = MemoryProvider()
    for path, data in files.items():
        io.put(path, data)
    before = {path: io.get(path) for path in files}
    tracemalloc.start()
    start = time.monotonic()
    status: str | None = None
    message = ""
    try:
        _read_everything(io, top)
    except VDError as exc:
        # Only words are kept: the exception's traceback would tie this frame (and
        # the files) into a cycle that lives until the next full garbage collection.
        status, message = exc.status, str(exc)
        assert message, "an error without a message"
    finally:
        seconds = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert {path: io.get(path) for path in files} == before, "a read-only path wrote"
    assert set(io.files) == set(files), "a read-only path created or deleted a file"
    assert peak < MEMORY_LIMIT, f"used {peak >> 20} MiB of memory"
    assert seconds < TIME_LIMIT, f"took {seconds:.1f} s"
    return Outcome(status, message, seconds, peak)


def _read_everything(io: MemoryProvider, top: str) -> None:
    probe(top, io=io)
    with open_chain(top, OpenFlags.READONLY, io=io) as disk:
        size = disk.size
        step = max(size // 16, 1)
        pieces = [(0, min(size, READ_BUDGET // 4))] + [
            (offset, min(size - offset, READ_BUDGET // 32))
            for offset in range(step, size, step)][:24]
        if size > 512:
            pieces.append((size - 512, 512))
        for offset, length in pieces:
            if length > 0:
                disk.read(offset, length)
        for count, _extent in enumerate(disk.map()):
            if count > MAX_MAP_EXTENTS:
                break
        disk.dump()
        for view in disk.images:
            for field in ("uuid", "parent_uuid", "modification_uuid", "comment", "pchs",
                          "lchs"):
                try:
                    getattr(view, field)
                except VDError:
                    pass
