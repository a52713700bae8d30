"""VDAsync*: many requests in flight, ordered where they overlap."""

from __future__ import annotations

import asyncio
import os
import random

from vdgui.engine import Disk, OpenFlags, open_chain
from vdgui.engine.aio import AsyncDisk

MiB = 1 << 20


def test_interleaved_requests_match_a_sequential_model(tmp_path):
    path = tmp_path / "a.vdi"
    size = 8 * MiB
    with Disk() as disk:
        disk.create_base(path, size, config={"AllocationBlockSize": "64K"})
    rng = random.Random(7)
    model = bytearray(size)
    expected_reads = []

    async def main():
        disk = open_chain(path, OpenFlags.DISCARD)
        async with AsyncDisk(disk) as adisk:
            tasks = []
            for i in range(300):
                offset = rng.randrange(0, size - 70000)
                length = rng.randrange(1, 70000)
                kind = rng.choice(["read", "write", "write", "discard", "flush"])
                if kind == "write":
                    data = os.urandom(length)
                    model[offset:offset + length] = data
                    tasks.append(adisk.awrite(offset, data))
                elif kind == "read":
                    expected_reads.append(bytes(model[offset:offset + length]))
                    tasks.append(adisk.aread(offset, length))
                elif kind == "discard":
                    model[offset:offset + length] = bytes(length)
                    tasks.append(adisk.adiscard([(offset, length)]))
                else:
                    tasks.append(adisk.aflush())
            results = await asyncio.gather(*tasks)
        reads = [r for r in results if isinstance(r, bytes)]
        assert reads == expected_reads
        assert disk.read(0, size) == model
        disk.close_all()

    asyncio.run(main())


def test_non_overlapping_requests_run_concurrently(tmp_path):
    path = tmp_path / "b.vdi"
    with Disk() as disk:
        disk.create_base(path, 4 * MiB)

    async def main():
        disk = open_chain(path)
        async with AsyncDisk(disk) as adisk:
            first = adisk.awrite(0, b"a" * 512)
            second = adisk.aread(MiB, 512)      # independent of the write
            third = adisk.aread(0, 512)         # must see the write
            _, untouched, seen = await asyncio.gather(first, second, third)
            assert untouched == bytes(512) and seen == b"a" * 512
            assert adisk._inflight == []  # nothing left in flight
        disk.close_all()

    asyncio.run(main())
