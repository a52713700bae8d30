"""QCOW2 internal snapshots: reading the snapshot table (listing only).

Each entry (8-byte aligned) holds the offset and size of the snapshot's own copy of
the L1 table, an id and a name, dates, the VM state size and optional extra data
(VM state size, virtual disk size, instruction count).  We list snapshots and keep
their L1 tables out of the way of allocation; we do not create or apply them.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass

from ...errors import Corrupted
from ...io import Storage
from ...layout import Layout
from .header import MAX_L1_BYTES

ENTRY = Layout("QCOW2 snapshot table entry", ">", [
    ("l1_table_offset", "Q"), ("l1_size", "I"), ("id_size", "H"), ("name_size", "H"),
    ("date_sec", "I"), ("date_nsec", "I"), ("vm_clock_nsec", "Q"),
    ("vm_state_size", "I"), ("extra_data_size", "I")])

#: qemu's limits: extra data per entry and the whole table.
MAX_EXTRA = 1024
MAX_TABLE_BYTES = 64 << 20
#: How much of the table is read per request.
_CHUNK = 64 << 10


@dataclass(frozen=True)
class Snapshot:
    """One internal snapshot."""

    id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    disk_size: int | None
    icount: int | None

    def describe(self) -> str:
        when = dt.datetime.fromtimestamp(self.date_sec, dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
        clock = self.vm_clock_nsec / 1e9
        parts = [f"id {self.id!r}", f"name {self.name!r}", f"taken {when}",
                 f"VM clock {clock:.3f} s", f"VM state {self.vm_state_size} bytes",
                 f"L1 table {self.l1_table_offset:#x} ({self.l1_size} entries)"]
        if self.disk_size is not None:
            parts.append(f"disk size {self.disk_size}")
        return ", ".join(parts)


def read_snapshots(storage: Storage, offset: int, count: int, cluster_size: int,
                   path: str) -> tuple[list[Snapshot], int]:
    """The snapshot table at ``offset``; returns the snapshots and the table's length."""
    snapshots: list[Snapshot] = []
    buf = b""
    buf_start = offset
    pos = offset

    def need(length: int) -> memoryview:
        nonlocal buf, buf_start
        if pos + length - offset > MAX_TABLE_BYTES:
            raise Corrupted(f"the snapshot table is larger than {MAX_TABLE_BYTES} bytes", path)
        if pos < buf_start or pos + length > buf_start + len(buf):
            buf_start = pos
            buf = storage.read_at(pos, max(length, _CHUNK))
            if len(buf) < length:
                raise Corrupted("the snapshot table runs past the end of the file", path)
        return memoryview(buf)[pos - buf_start:pos - buf_start + length]

    for index in range(count):
        e = ENTRY.unpack(need(ENTRY.size), 0, path)
        pos += ENTRY.size
        extra_size = e["extra_data_size"]
        if extra_size > MAX_EXTRA:
            raise Corrupted(f"snapshot {index} has {extra_size} bytes of extra data (at most "
                            f"{MAX_EXTRA})", path)
        extra = bytes(need(extra_size))
        pos += extra_size
        ident = bytes(need(e["id_size"])).decode("utf-8", "replace")
        pos += e["id_size"]
        name = bytes(need(e["name_size"])).decode("utf-8", "replace")
        pos += e["name_size"]
        pos = offset + (pos - offset + 7) // 8 * 8
        l1_offset, l1_size = e["l1_table_offset"], e["l1_size"]
        if l1_size and (l1_offset % cluster_size or l1_offset < cluster_size
                        or l1_size * 8 > MAX_L1_BYTES):
            raise Corrupted(f"snapshot {ident!r} has an invalid L1 table ({l1_size} entries at "
                            f"{l1_offset:#x})", path)
        vm_state = e["vm_state_size"]
        disk_size = icount = None
        if extra_size >= 8:
            vm_state = struct.unpack_from(">Q", extra, 0)[0] or vm_state
        if extra_size >= 16:
            disk_size = struct.unpack_from(">Q", extra, 8)[0]
        if extra_size >= 24:
            icount = struct.unpack_from(">q", extra, 16)[0]
        snapshots.append(Snapshot(ident, name, l1_offset, l1_size, e["date_sec"],
                                  e["date_nsec"], e["vm_clock_nsec"], vm_state, disk_size,
                                  icount))
    return snapshots, pos - offset
