"""Raw-disk VMDKs: descriptors that map a host disk, or some of its partitions.

VirtualBox describes such a disk with ``VDISKRAW`` (the whole device, or a list of
``VDISKRAWPARTDESC`` areas); here they are :class:`RawDisk` and
:class:`RawPartition`.  A whole-disk image is a ``fullDevice`` descriptor with one
FLAT extent on the device.  A partition image is a ``partitionedDevice``
descriptor: each area becomes a FLAT extent on its device (at its offset there),
areas with partition-table data become FLAT extents in a small ``NAME-pt.vmdk``
file holding a copy of those sectors (so the guest sees the table, and writes to
it stay in the copy), and everything else becomes a ZERO extent.

How to ask for one (``Disk.create_base(..., image_flags=ImageFlags.VMDK_RAWDISK,
config=...)``), through the creation options:

* ``RawDisk``: a :class:`RawDisk` object, or its JSON text (:meth:`RawDisk.to_json`);
  the most general form — any list of areas, any devices.
* ``RawDrive``: the path of the disk (a device, or a file standing in for one).
  Alone, it maps the whole disk.  With ``Partitions`` (``"1,3,5"``) the disk's
  partition table (MBR with logical partitions, or GPT) is read; the listed
  partitions are mapped, the table sectors are copied into the ``-pt`` file and
  the rest reads as zeros.  ``BootSector`` (bytes, or the path of a file) replaces
  the first 440 bytes of the copied MBR (the boot code; the partition entries are
  kept).  ``Relative=1`` maps each partition through its own device
  (``/dev/sda`` + ``3`` = ``/dev/sda3``; ``/dev/nvme0n1`` + ``3`` =
  ``/dev/nvme0n1p3``) instead of an offset into the disk.

The virtual size is the requested size (rounded up to a sector); every area must
fit in it.  Opening a raw-disk VMDK later needs ``AllowExternalExtents=1`` in the
per-image configuration: the descriptor can name any host file.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import Corrupted, InvalidParameter
from ...io import StorageProvider
from ...types import SECTOR
from .config import option
from .descriptor import ExtentLine


@dataclass(frozen=True)
class RawPartition:
    """``VDISKRAWPARTDESC``: one area of the virtual disk (byte units, sector aligned)."""

    #: Where the area starts in the virtual disk (``offStartInVDisk``).
    start: int
    #: Its length (``cbData``).
    size: int
    #: The host device or file holding its data (``pszRawDevice``); None with no
    #: ``data`` means the guest cannot see it (reads zeros).
    device: str | None = None
    #: Where the data starts in ``device`` (``offStartInDevice``).
    device_offset: int = 0
    #: Partition-table sectors to show instead of the device's (``pvPartitionData``);
    #: stored in the ``-pt`` file, padded with zeros to ``size``.
    data: bytes | None = None
    #: Map the device read-only (``VDISKRAW_READONLY``): an RDONLY extent.
    read_only: bool = False

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class RawDisk:
    """``VDISKRAW``: a whole host disk (``device``) or a list of areas."""

    device: str | None = None
    partitions: tuple[RawPartition, ...] = field(default_factory=tuple)
    read_only: bool = False

    def to_json(self) -> str:
        def area(p: RawPartition) -> dict[str, Any]:
            out: dict[str, Any] = {"start": p.start, "size": p.size}
            if p.device is not None:
                out.update(device=p.device, device_offset=p.device_offset)
            if p.data is not None:
                out["data"] = p.data.hex()
            if p.read_only:
                out["read_only"] = True
            return out
        return json.dumps({"device": self.device, "read_only": self.read_only,
                           "partitions": [area(p) for p in self.partitions]})

    @classmethod
    def from_json(cls, text: str) -> RawDisk:
        try:
            obj = json.loads(text)
            parts = tuple(RawPartition(
                start=int(p["start"]), size=int(p["size"]), device=p.get("device"),
                device_offset=int(p.get("device_offset", 0)),
                data=bytes.fromhex(p["data"]) if p.get("data") is not None else None,
                read_only=bool(p.get("read_only", False))) for p in obj.get("partitions", []))
            return cls(device=obj.get("device"), partitions=parts,
                       read_only=bool(obj.get("read_only", False)))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidParameter(f"the RawDisk option is not a valid raw-disk description "
                                   f"({exc})") from None

    def extents(self, disk_sectors: int, pt_name: str,
                path: str) -> tuple[list[ExtentLine], bytes]:
        """The descriptor's extent lines and the ``-pt`` file's content."""
        access = "RDONLY" if self.read_only else "RW"
        if not self.partitions:
            if not self.device:
                raise InvalidParameter("a raw-disk description needs a device or partitions",
                                       path)
            return [ExtentLine(access, disk_sectors, "FLAT", _absolute(self.device), 0)], b""
        lines: list[ExtentLine] = []
        overlay = bytearray()
        pos = 0
        for part in sorted(self.partitions, key=lambda p: p.start):
            for value, what in ((part.start, "start"), (part.size, "size"),
                                (part.device_offset, "device offset")):
                if value < 0 or value % SECTOR:
                    raise InvalidParameter(f"raw-disk area at {part.start}: the {what} "
                                           f"{value} is not a multiple of 512", path)
            if part.size == 0:
                continue
            if part.start < pos:
                raise InvalidParameter(f"raw-disk areas overlap at byte {part.start}", path)
            if part.end > disk_sectors * SECTOR:
                raise InvalidParameter(f"the raw-disk area at {part.start} ({part.size} "
                                       f"bytes) ends past the disk size "
                                       f"{disk_sectors * SECTOR}", path)
            if part.start > pos:
                lines.append(ExtentLine("RW", (part.start - pos) // SECTOR, "ZERO"))
            sectors = part.size // SECTOR
            mode = "RDONLY" if self.read_only or part.read_only else "RW"
            if part.data is not None:
                if len(part.data) > part.size:
                    raise InvalidParameter(f"the partition data at {part.start} is larger "
                                           f"than its area", path)
                lines.append(ExtentLine("RW", sectors, "FLAT", pt_name, len(overlay) // SECTOR))
                overlay += part.data + bytes(part.size - len(part.data))
            elif part.device:
                lines.append(ExtentLine(mode, sectors, "FLAT", _absolute(part.device),
                                        part.device_offset // SECTOR))
            else:
                lines.append(ExtentLine("RW", sectors, "ZERO"))
            pos = part.end
        if pos < disk_sectors * SECTOR:
            lines.append(ExtentLine("RW", disk_sectors - pos // SECTOR, "ZERO"))
        return lines, bytes(overlay)


def _absolute(device: str) -> str:
    return device if os.path.isabs(device) else os.path.abspath(device)


# -- building a RawDisk from the creation options ----------------------------------------


def raw_disk_from_config(io: StorageProvider, config: Mapping[str, Any], path: str) -> RawDisk:
    """The :class:`RawDisk` the creation options describe (see the module docstring)."""
    given = option(config, "RawDisk")
    if isinstance(given, RawDisk):
        return given
    if isinstance(given, str):
        return RawDisk.from_json(given)
    if given is not None:
        raise InvalidParameter("the RawDisk option must be a RawDisk object or its JSON text",
                               path)
    drive = option(config, "RawDrive")
    if not drive:
        raise InvalidParameter("a raw-disk VMDK needs the option RawDrive (the disk to map, "
                               "optionally with Partitions) or RawDisk", path)
    drive = str(drive)
    numbers = option(config, "Partitions")
    if numbers is None or str(numbers).strip() == "":
        return RawDisk(device=drive)
    try:
        wanted = sorted({int(n) for n in str(numbers).replace(" ", "").split(",") if n})
    except ValueError:
        raise InvalidParameter(f"Partitions={numbers!r}: give partition numbers separated by "
                               f"commas, e.g. 1,3", path) from None
    boot = option(config, "BootSector")
    if isinstance(boot, str):
        with io.open(boot) as storage:
            boot = storage.read_at(0, SECTOR)
    relative = str(option(config, "Relative") or "0").strip().lower() in ("1", "true", "yes")
    return raw_disk_from_partitions(io, drive, wanted, boot, relative)


@dataclass(frozen=True)
class HostPartition:
    """A partition found in a host disk's partition table (byte units)."""

    number: int
    start: int
    size: int


MBR_SIGNATURE = b"\x55\xaa"
EXTENDED_TYPES = (0x05, 0x0F, 0x85)
GPT_PROTECTIVE = 0xEE
MAX_LOGICAL = 256
BOOT_CODE = 440


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int]]:
    """``(type, first LBA, sector count)`` of the four entries of an MBR/EBR sector."""
    return [(sector[446 + 16 * i + 4],) + struct.unpack_from("<II", sector, 446 + 16 * i + 8)
            for i in range(4)]


def read_partition_table(io: StorageProvider,
                         drive: str) -> tuple[list[HostPartition], list[tuple[int, bytes]]]:
    """The partitions of ``drive`` and its table areas ``(offset, bytes)``."""
    with io.open(drive) as storage:
        def sector(lba: int, count: int = 1) -> bytes:
            try:
                return storage.read_exact(lba * SECTOR, count * SECTOR, "partition table")
            except Corrupted:
                raise InvalidParameter(f"the partition table of {drive} points past its end "
                                       f"(sector {lba})", drive) from None

        mbr = sector(0)
        if mbr[510:512] != MBR_SIGNATURE:
            raise InvalidParameter(f"{drive} has no partition table (no MBR signature)", drive)
        entries = _mbr_entries(mbr)
        if any(kind == GPT_PROTECTIVE for kind, _, _ in entries):
            return _read_gpt(drive, sector, mbr)
        partitions: list[HostPartition] = []
        areas = [(0, mbr)]
        for i, (kind, lba, count) in enumerate(entries):
            if kind == 0 or count == 0:
                continue
            if kind in EXTENDED_TYPES:
                _read_logical(drive, sector, lba, partitions, areas)
            else:
                partitions.append(HostPartition(i + 1, lba * SECTOR, count * SECTOR))
        return partitions, areas


def _read_logical(drive: str, sector, extended: int, partitions: list[HostPartition],
                  areas: list[tuple[int, bytes]]) -> None:
    """Walk the chain of extended boot records; logical partitions are 5, 6, ..."""
    ebr, seen, number = extended, set(), 5
    while ebr and ebr not in seen:
        if len(seen) >= MAX_LOGICAL:
            raise InvalidParameter(f"the extended partition of {drive} has more than "
                                   f"{MAX_LOGICAL} logical partitions", drive)
        seen.add(ebr)
        raw = sector(ebr)
        if raw[510:512] != MBR_SIGNATURE:
            raise InvalidParameter(f"the extended boot record at sector {ebr} of {drive} is "
                                   f"damaged", drive)
        areas.append((ebr * SECTOR, raw))
        (kind, lba, count), (next_kind, next_lba, _) = _mbr_entries(raw)[:2]
        if kind and count:
            partitions.append(HostPartition(number, (ebr + lba) * SECTOR, count * SECTOR))
            number += 1
        ebr = extended + next_lba if next_kind in EXTENDED_TYPES and next_lba else 0


def _read_gpt(drive: str, sector, mbr: bytes) -> tuple[list[HostPartition],
                                                        list[tuple[int, bytes]]]:
    header = sector(1)
    if header[:8] != b"EFI PART":
        raise InvalidParameter(f"{drive} has a protective MBR but no GPT header", drive)
    alternate, = struct.unpack_from("<Q", header, 32)
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if not 128 <= entry_size <= 4096 or entry_size % 8 or not 0 < count <= 4096 \
            or entries_lba < 2:
        raise InvalidParameter(f"the GPT header of {drive} is damaged", drive)
    table_sectors = -(-count * entry_size // SECTOR)
    primary = sector(0, entries_lba + table_sectors)
    areas = [(0, primary)]
    if alternate > entries_lba + table_sectors:
        backup_start = alternate - table_sectors
        areas.append((backup_start * SECTOR, sector(backup_start, table_sectors + 1)))
    table = primary[entries_lba * SECTOR:]
    partitions = []
    for i in range(count):
        entry = table[i * entry_size:(i + 1) * entry_size]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last < first:
            raise InvalidParameter(f"GPT partition {i + 1} of {drive} ends before it starts",
                                   drive)
        partitions.append(HostPartition(i + 1, first * SECTOR, (last - first + 1) * SECTOR))
    return partitions, areas


def partition_device(drive: str, number: int) -> str:
    """The device of partition ``number`` of ``drive`` (Linux naming)."""
    return f"{drive}p{number}" if drive[-1:].isdigit() else f"{drive}{number}"


def raw_disk_from_partitions(io: StorageProvider, drive: str, wanted: list[int],
                             boot: bytes | None = None, relative: bool = False) -> RawDisk:
    """A :class:`RawDisk` showing partitions ``wanted`` of ``drive`` and its table."""
    partitions, areas = read_partition_table(io, drive)
    known = {p.number: p for p in partitions}
    missing = [n for n in wanted if n not in known]
    if missing:
        listing = ", ".join(str(n) for n in sorted(known)) or "none"
        raise InvalidParameter(f"{drive} has no partition {missing[0]} (its partitions: "
                               f"{listing})", drive)
    parts = []
    for offset, data in areas:
        if offset == 0 and boot:
            data = bytes(boot[:BOOT_CODE]) + data[min(len(boot), BOOT_CODE):]
        parts.append(RawPartition(start=offset, size=len(data), data=data))
    for number in wanted:
        p = known[number]
        if relative:
            parts.append(RawPartition(p.start, p.size, partition_device(drive, number), 0))
        else:
            parts.append(RawPartition(p.start, p.size, drive, p.start))
    parts.sort(key=lambda p: p.start)
    for a, b in zip(parts, parts[1:]):
        if b.start < a.end:
            raise InvalidParameter(f"the partition table of {drive} has overlapping areas "
                                   f"(at byte {b.start})", drive)
    return RawDisk(partitions=tuple(parts))
