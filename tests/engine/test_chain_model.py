"""Property: any sequence of writes and reads through a chain of 1-5 images equals
the same writes on a bytearray, across new layers, reopens and mixed block sizes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdgui.engine import Disk, OpenFlags, open_chain
from vdgui.engine.errors import InvalidType

KiB = 1024
MiB = 1 << 20
BLOCK_SIZES = [64 * KiB, 256 * KiB, MiB]

#: Formats the chain test stacks: every format that can be a differencing image.
DIFF_FORMATS = ["VDI", "VMDK", "VHD", "VHDX", "QCOW2", "QCOW", "QED"]
#: Allocation-unit options per format (small ones, so writes straddle many units).
UNITS = {"VDI": ("AllocationBlockSize", BLOCK_SIZES),
         "QCOW2": ("cluster_size", [4 * KiB, 64 * KiB]),
         "QCOW": ("cluster_size", [4 * KiB, 64 * KiB]),
         "QED": ("cluster_size", [4 * KiB, 64 * KiB]),
         "VHD": ("BlockSize", [256 * KiB, 2 * MiB])}


def op_strategy(size: int):
    offset = st.integers(0, size - 1)
    write = st.tuples(st.just("write"), offset, st.integers(1, 300 * KiB),
                      st.sampled_from([0, 0x11, 0x5A, 0xFF, None]))
    read = st.tuples(st.just("read"), offset, st.integers(1, 600 * KiB))
    diff = st.tuples(st.just("diff"), st.integers(0, 2), st.sampled_from(DIFF_FORMATS))
    reopen = st.tuples(st.just("reopen"))
    return st.lists(st.one_of(write, write, read, diff, reopen), min_size=1, max_size=25)


def unit_config(fmt: str, choice: int) -> dict[str, str] | None:
    option, units = UNITS.get(fmt, (None, [0]))
    return {option: str(units[choice % len(units)])} if option else None


def pattern(byte: int | None, offset: int, length: int) -> bytes:
    if byte is not None:
        return bytes([byte]) * length
    # Position-dependent content, so misplaced data is always noticed.
    return bytes((offset + i) * 7 % 251 for i in range(length))


#: Formats the base can be in.
BASE_FORMATS = DIFF_FORMATS + ["Parallels", "RAW"]


@st.composite
def scenario(draw):
    size = draw(st.integers(1, 6)) * MiB + draw(st.sampled_from([0, 512, 64 * KiB - 512]))
    return (size, draw(st.sampled_from(BASE_FORMATS)), draw(st.integers(0, 2)),
            draw(op_strategy(size)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_chain_matches_bytearray_model(case):
    size, base_format, choice, ops = case
    model = bytearray(size)
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"base.{base_format.lower()}"]
        disk = Disk()
        disk.create_base(paths[0], size, base_format, config=unit_config(base_format, choice))
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
                    _, choice, fmt = op
                    paths.append(Path(folder) / f"diff{len(paths)}.{fmt.lower()}")
                    try:
                        disk.create_diff(paths[-1], fmt, config=unit_config(fmt, choice))
                    except InvalidType as exc:
                        # A UUID-only child (VDI) over a parent without a UUID: refused,
                        # since it could never find its parent again.
                        assert "only by UUID" in str(exc)
                        paths.pop()
                elif kind == "reopen":
                    disk.close_all()
                    disk = open_chain(paths[-1])
                    assert len(disk) == len(paths)
            disk.close_all()
            with open_chain(paths[-1], OpenFlags.READONLY) as check:
                assert check.read(0, size) == model
        finally:
            disk.close_all()
