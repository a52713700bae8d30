"""Byte-level access to QCOW2 structures, independent of the engine's parser, for
tests that damage images on purpose, and a reading of ``qemu-img check`` output."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from tests import qemu

OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63


@dataclass
class Layout:
    """The header fields of a QCOW2 image and helpers to find and patch entries."""

    path: Path
    cluster_bits: int
    size: int
    l1_size: int
    l1_offset: int
    reftable: int
    reftable_clusters: int
    refcount_bits: int

    @classmethod
    def read(cls, path: Path) -> Layout:
        raw = path.read_bytes()[:104]
        version, = struct.unpack_from(">I", raw, 4)
        order = struct.unpack_from(">I", raw, 96)[0] if version >= 3 else 4
        fields = struct.unpack_from(">IQIIQQI", raw, 20)
        cluster_bits, size, _crypt, l1_size, l1_offset, reftable, reftable_clusters = fields
        return cls(path, cluster_bits, size, l1_size, l1_offset, reftable, reftable_clusters,
                   1 << order)

    @property
    def cs(self) -> int:
        return 1 << self.cluster_bits

    def u64(self, offset: int) -> int:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return struct.unpack(">Q", f.read(8))[0]

    def put_u64(self, offset: int, value: int) -> None:
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(struct.pack(">Q", value))

    def l1_word(self, guest: int) -> int:
        """File offset of the L1 entry mapping guest byte ``guest``."""
        return self.l1_offset + 8 * ((guest >> self.cluster_bits) // (self.cs // 8))

    def l2_word(self, guest: int) -> int:
        """File offset of the L2 entry of guest byte ``guest`` (its table must exist)."""
        table = self.u64(self.l1_word(guest)) & OFFSET_MASK
        assert table, f"no L2 table for guest offset {guest}"
        return table + 8 * ((guest >> self.cluster_bits) % (self.cs // 8))

    def host_cluster(self, guest: int) -> int:
        return (self.u64(self.l2_word(guest)) & OFFSET_MASK) >> self.cluster_bits

    def _count_at(self, cluster: int) -> int:
        assert self.refcount_bits == 16, "tests patch 16-bit refcounts only"
        per = self.cs * 8 // self.refcount_bits
        block = self.u64(self.reftable + 8 * (cluster // per)) & ~0x1FF
        assert block, f"no refcount block for cluster {cluster}"
        return block + 2 * (cluster % per)

    def refcount(self, cluster: int) -> int:
        with open(self.path, "rb") as f:
            f.seek(self._count_at(cluster))
            return struct.unpack(">H", f.read(2))[0]

    def set_refcount(self, cluster: int, value: int) -> None:
        with open(self.path, "r+b") as f:
            f.seek(self._count_at(cluster))
            f.write(struct.pack(">H", value))

    @property
    def clusters(self) -> int:
        return -(-self.path.stat().st_size // self.cs)


#: qemu-img check lines and what identifies the problem they report.
_LINES = [
    (re.compile(r"ERROR cluster (\d+) refcount=\d+ reference=\d+"), "cluster"),
    (re.compile(r"Leaked cluster (\d+) refcount=\d+ reference=\d+"), "leak"),
    (re.compile(r"ERROR OFLAG_COPIED data cluster: l2_entry=([0-9a-f]+)"), "hex"),
    (re.compile(r"ERROR OFLAG_COPIED L2 cluster: l1_index=\d+ l1_entry=([0-9a-f]+)"), "hex"),
    (re.compile(r"ERROR: counting reference for region exceeding the end of the file by "
                r"one cluster or more: offset 0x([0-9a-f]+)"), "hex"),
    (re.compile(r"ERROR l2_offset=([0-9a-f]+): Table is not cluster aligned"), "hex"),
    (re.compile(r"ERROR offset=([0-9a-f]+): \w+ cluster is not properly aligned"), "hex"),
    (re.compile(r"ERROR found (?:L1|l2) entry with reserved bits set: ([0-9a-f]+)"), "hex"),
    (re.compile(r"ERROR: coffset=0x([0-9a-f]+): copied flag"), "hex"),
    (re.compile(r"ERROR refcount (?:block|table entry) (\d+)"), "block"),
]


def qemu_problems(path: Path) -> list[tuple[str, int]]:
    """What ``qemu-img check`` reports, line by line, as ``(kind, value)``."""
    result = qemu.check(path, "qcow2")
    found = []
    for line in (result.stdout + result.stderr).splitlines():
        if not line.startswith(("ERROR", "Leaked")):
            continue
        for pattern, kind in _LINES:
            match = pattern.match(line)
            if match:
                value = match.group(1)
                found.append((kind, int(value, 16) if kind == "hex" else int(value)))
                break
        else:
            raise AssertionError(f"qemu-img check reported something new: {line}")
    return found


def assert_covers(path: Path, findings: list, cluster_size: int) -> None:
    """Every problem qemu-img check reports is among ``findings``."""
    for kind, value in qemu_problems(path):
        if kind == "cluster":
            hit = any(f.severity == "error" and f.offset == value * cluster_size
                      for f in findings)
        elif kind == "leak":
            hit = any(f.severity == "leak" and f.offset == value * cluster_size
                      for f in findings)
        elif kind == "hex":
            hit = any(f"{value:#x}" in f.what for f in findings)
        else:
            hit = any(f"refcount block {value} " in f.what
                      or f"refcount table entry {value} " in f.what for f in findings)
        assert hit, f"qemu reports {kind} {value:#x} / {value}; we found {findings}"
