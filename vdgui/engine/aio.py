"""The ``VDAsync*`` calls as asyncio coroutines.

``AsyncDisk(disk)`` offers ``aread``, ``awrite``, ``aflush`` and ``adiscard``; each
returns an asyncio task that is already under way.  Many requests may be in flight
at once; each runs in a worker thread, so the event loop
(the GUI's, through qasync) never blocks on disk I/O.  Ordering follows the order
in which the calls were made: a request waits for every earlier request
whose range overlaps its own when either of them writes (read-after-write,
write-after-read and write-after-write hazards), a flush waits for every earlier
write, discard and flush, and everything called after a flush waits for it.
Requests that don't conflict are not held back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field

from .container import Disk
from .ops.discard import discard

_WHOLE_DISK = (0, 1 << 64)


@dataclass
class _Request:
    kind: str                       # "read", "write", "flush", "discard"
    ranges: list[tuple[int, int]]   # (start, end)
    done: asyncio.Future[None] = field(repr=False)

    @property
    def writes(self) -> bool:
        return self.kind != "read"

    def conflicts_with(self, earlier: _Request) -> bool:
        if self.kind == "flush":
            return earlier.writes
        if earlier.kind == "flush":
            return True
        if not (self.writes or earlier.writes):
            return False
        return any(a < d and c < b for a, b in self.ranges for c, d in earlier.ranges)


class AsyncDisk:
    """Asynchronous access to a :class:`Disk` (``VDAsyncRead`` and friends)."""

    def __init__(self, disk: Disk, executor: concurrent.futures.Executor | None = None,
                 workers: int = 4) -> None:
        self.disk = disk
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="vdgui-aio")
        self._inflight: list[_Request] = []

    async def __aenter__(self) -> AsyncDisk:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for every request, then release the worker threads."""
        pending = [r.done for r in self._inflight]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._own_executor:
            self._executor.shutdown(wait=True)

    def _register(self, kind: str, ranges: list[tuple[int, int]]) -> tuple[_Request, list]:
        loop = asyncio.get_running_loop()
        request = _Request(kind, ranges, loop.create_future())
        waits = [r.done for r in self._inflight if request.conflicts_with(r)]
        self._inflight.append(request)
        return request, waits

    def _run(self, kind: str, ranges: list[tuple[int, int]], func, *args) -> asyncio.Task:
        # Registered now, in the caller's order; the work starts without waiting to
        # be awaited, as VD's asynchronous requests do.
        request, waits = self._register(kind, ranges)
        return asyncio.ensure_future(self._execute(request, waits, func, *args))

    async def _execute(self, request: _Request, waits: list, func, *args):
        try:
            if waits:
                await asyncio.gather(*waits)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, func, *args)
        finally:
            # Later requests only wait for completion, success or not.
            self._inflight.remove(request)
            request.done.set_result(None)

    def aread(self, offset: int, length: int) -> asyncio.Task:
        """``VDAsyncRead``: a task returning ``length`` bytes at ``offset``."""
        return self._run("read", [(offset, offset + length)], self.disk.read, offset, length)

    def awrite(self, offset: int, data: bytes | bytearray | memoryview) -> asyncio.Task:
        """``VDAsyncWrite``."""
        data = bytes(data)  # the caller may reuse its buffer once the call returns
        return self._run("write", [(offset, offset + len(data))], self.disk.write, offset, data)

    def aflush(self) -> asyncio.Task:
        """``VDAsyncFlush``: completes after every earlier write is durable."""
        return self._run("flush", [_WHOLE_DISK], self.disk.flush)

    def adiscard(self, ranges: list[tuple[int, int]]) -> asyncio.Task:
        """``VDAsyncDiscardRanges``."""
        spans = [(offset, offset + length) for offset, length in ranges]
        return self._run("discard", spans, discard, self.disk, list(ranges))
