"""Property: any sequence of writes and reads through a chain of 1-5 images equals
the same writes on a bytearray, across new layers, reopens and mixed block sizes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdgui.engine import Disk, OpenFlags, open_chain

KiB = 1024
MiB = 1 << 20
BLOCK_SIZES = [64 * KiB, 256 * KiB, MiB]

#: Formats the chain test stacks (others join as their backends land).
DIFF_FORMATS = ["VDI"]


def op_strategy(size: int):
    offset = st.integers(0, size - 1)
    write = st.tuples(st.just("write"), offset, st.integers(1, 300 * KiB),
                      st.sampled_from([0, 0x11, 0x5A, 0xFF, None]))
    read = st.tuples(st.just("read"), offset, st.integers(1, 600 * KiB))
    diff = st.tuples(st.just("diff"), st.sampled_from(BLOCK_SIZES),
                     st.sampled_from(DIFF_FORMATS))
    reopen = st.tuples(st.just("reopen"))
    return st.lists(st.one_of(write, write, read, diff, reopen), min_size=1, max_size=25)


def pattern(byte: int | None, offset: int, length: int) -> bytes:
    if byte is not None:
        return bytes([byte]) * length
    # Position-dependent content, so misplaced data is always noticed.
    return bytes((offset + i) * 7 % 251 for i in range(length))


@st.composite
def scenario(draw):
    size = draw(st.integers(1, 6)) * MiB + draw(st.sampled_from([0, 512, 64 * KiB - 512]))
    return size, draw(st.sampled_from(BLOCK_SIZES)), draw(op_strategy(size))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_chain_matches_bytearray_model(case):
    size, base_block, ops = case
    model = bytearray(size)
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / "base.vdi"]
        disk = Disk()
        disk.create_base(paths[0], size, config={"AllocationBlockSize": str(base_block)})
        try:
            for op in ops:
                kind = op[0]
                if kind == "write":
                    _, offset, length, byte = op
                    length = min(length, size - offset)
                    data = pattern(byte, offset, length)
                    disk.write(offset, data)
                    model[offset:offset + length] = data
                elif kind == "read":
                    _, offset, length = op
                    length = min(length, size - offset)
                    assert disk.read(offset, length) == model[offset:offset + length]
                elif kind == "diff" and len(paths) < 5:
                    _, block, fmt = op
                    paths.append(Path(folder) / f"diff{len(paths)}.{fmt.lower()}")
                    disk.create_diff(paths[-1], fmt,
                                     config={"AllocationBlockSize": str(block)}
                                     if fmt == "VDI" else None)
                elif kind == "reopen":
                    disk.close_all()
                    disk = open_chain(paths[-1])
                    assert len(disk) == len(paths)
            disk.close_all()
            with open_chain(paths[-1], OpenFlags.READONLY) as check:
                assert check.read(0, size) == model
        finally:
            disk.close_all()
