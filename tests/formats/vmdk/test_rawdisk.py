"""Raw-disk VMDKs over plain files standing in for host disks."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from vdgui.engine import Disk, ImageFlags, OpenFlags, Status, open_chain
from vdgui.engine.errors import InvalidParameter, InvalidState
from vdgui.engine.formats.vmdk import ALLOW_EXTERNAL, ExtentRefused, RawDisk, RawPartition
from vdgui.engine.formats.vmdk.rawdisk import partition_device

S = 512
ALLOW = {ALLOW_EXTERNAL: "1"}
RAW = ImageFlags.VMDK_RAWDISK


def _entry(kind: int, lba: int, count: int) -> bytes:
    return bytes([0, 0, 0, 0, kind, 0, 0, 0]) + struct.pack("<II", lba, count)


def _table(entries: list[bytes], code: int = 0xB0) -> bytes:
    sector = bytearray([code]) * 446
    for e in entries:
        sector += e
    sector += bytes(510 - len(sector)) + b"\x55\xaa"
    return bytes(sector)


def mbr_disk(path: Path) -> bytes:
    """4 MiB: primaries 1 (2048+2048), 2 (4096+2048), extended 3 holding logical 5."""
    disk = bytearray(b"\x5a" * (8192 * S))
    disk[0:S] = _table([_entry(0x83, 2048, 2048), _entry(0x83, 4096, 2048),
                        _entry(0x05, 6144, 2048)])
    disk[6144 * S:6145 * S] = _table([_entry(0x83, 64, 1024)], code=0)
    disk[2048 * S:4096 * S] = b"\xa1" * (2048 * S)
    disk[4096 * S:6144 * S] = b"\xa2" * (2048 * S)
    disk[6208 * S:7232 * S] = b"\xa5" * (1024 * S)
    path.write_bytes(disk)
    return bytes(disk)


def test_whole_device(tmp_path: Path) -> None:
    device = tmp_path / "device.img"
    content = mbr_disk(device)
    path = tmp_path / "raw.vmdk"
    with Disk() as disk:
        disk.create_base(path, len(content), "VMDK", RAW, config={"RawDrive": str(device)})
        assert disk.read(0, len(content)) == content
        assert disk.block_status(0, len(content))[1:] == (Status.DATA, len(content))
        disk.write(10 * S, b"\x77" * S)
        assert disk[0].image_flags == RAW | ImageFlags.FIXED
        assert [Path(p).name for p in disk.image(0).files] == ["raw.vmdk"]
    text = path.read_text()
    assert 'createType="fullDevice"' in text and f'RW 8192 FLAT "{device}" 0' in text
    assert device.read_bytes()[10 * S:11 * S] == b"\x77" * S
    with Disk() as disk, pytest.raises(ExtentRefused) as info:
        disk.open(path, flags=OpenFlags.READONLY)
    assert "raw-disk" in str(info.value)
    with open_chain(path, OpenFlags.READONLY, config=ALLOW) as disk:
        assert disk.read(10 * S, S) == b"\x77" * S
        disk.close(delete=True)
    assert not path.exists() and device.exists()


def test_partitions_with_overlay(tmp_path: Path) -> None:
    device = tmp_path / "device.img"
    content = mbr_disk(device)
    path = tmp_path / "parts.vmdk"
    boot = b"\xcc" * 446
    with Disk() as disk:
        disk.create_base(path, len(content), "VMDK", RAW,
                         config={"RawDrive": str(device), "Partitions": "1,5",
                                 "BootSector": boot})
        got = disk.read(0, len(content))
        # The table sectors come from the overlay (boot code replaced), partitions 1
        # and 5 from the device, everything else reads zeros.
        expected = bytearray(len(content))
        expected[0:S] = b"\xcc" * 440 + content[440:S]
        expected[2048 * S:4096 * S] = content[2048 * S:4096 * S]
        expected[6144 * S:6145 * S] = content[6144 * S:6145 * S]
        expected[6208 * S:7232 * S] = content[6208 * S:7232 * S]
        assert got == expected
        assert disk.block_status(S, 8 * S)[1] == Status.ZERO
        disk.write(0, b"\x01" * S)  # the guest rewrites its MBR: only the copy changes
        disk.write(2048 * S, b"\x02" * S)
        with pytest.raises(InvalidState):
            disk.write(4096 * S, b"\x03" * S)  # partition 2 is not mapped
    after = device.read_bytes()
    assert after[0:S] == content[0:S]
    assert after[2048 * S:2049 * S] == b"\x02" * S
    assert (tmp_path / "parts-pt.vmdk").read_bytes()[:S] == b"\x01" * S
    text = path.read_text()
    assert 'createType="partitionedDevice"' in text
    assert 'RW 1 FLAT "parts-pt.vmdk" 0' in text and 'RW 1 FLAT "parts-pt.vmdk" 1' in text
    assert f'RW 2048 FLAT "{device}" 2048' in text
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY, config=ALLOW)
        assert disk.read(0, S) == b"\x01" * S
        assert [Path(p).name for p in disk.image(0).files] == ["parts.vmdk", "parts-pt.vmdk"]


def test_gpt_partitions(tmp_path: Path) -> None:
    sectors = 8192
    disk_bytes = bytearray(b"\x5a" * (sectors * S))
    disk_bytes[0:S] = _table([_entry(0xEE, 1, sectors - 1)])
    entry = uuid.uuid4().bytes + uuid.uuid4().bytes + struct.pack("<QQQ", 2048, 4095, 0)
    entries = entry.ljust(128 * 128, b"\0")

    def header(mine: int, other: int, table: int) -> bytes:
        raw = b"EFI PART" + struct.pack("<IIII", 0x10000, 92, 0, 0)
        raw += struct.pack("<QQQQ", mine, other, 34, sectors - 34) + uuid.uuid4().bytes
        raw += struct.pack("<QIII", table, 128, 128, 0)
        return raw.ljust(S, b"\0")

    disk_bytes[S:2 * S] = header(1, sectors - 1, 2)
    disk_bytes[2 * S:34 * S] = entries
    disk_bytes[(sectors - 33) * S:(sectors - 1) * S] = entries
    disk_bytes[(sectors - 1) * S:] = header(sectors - 1, 1, sectors - 33)
    disk_bytes[2048 * S:4096 * S] = b"\xa1" * (2048 * S)
    device = tmp_path / "gpt.img"
    device.write_bytes(disk_bytes)
    with Disk() as disk:
        disk.create_base(tmp_path / "g.vmdk", len(disk_bytes), "VMDK", RAW,
                         config={"RawDrive": str(device), "Partitions": "1"})
        got = disk.read(0, len(disk_bytes))
    expected = bytearray(len(disk_bytes))
    expected[:34 * S] = disk_bytes[:34 * S]
    expected[2048 * S:4096 * S] = disk_bytes[2048 * S:4096 * S]
    expected[(sectors - 33) * S:] = disk_bytes[(sectors - 33) * S:]
    assert got == expected


def test_explicit_raw_disk_description(tmp_path: Path) -> None:
    device = tmp_path / "dev.bin"
    device.write_bytes(b"\xdd" * (256 * S))
    raw = RawDisk(partitions=(
        RawPartition(start=0, size=S, data=b"T" * 100),
        RawPartition(start=128 * S, size=128 * S, device=str(device), device_offset=64 * S,
                     read_only=True)))
    assert RawDisk.from_json(raw.to_json()) == raw
    for option in (raw, raw.to_json()):
        path = tmp_path / f"e{len(str(type(option)))}.vmdk"
        with Disk() as disk:
            disk.create_base(path, 512 * S, "VMDK", RAW, config={"RawDisk": option})
            assert disk.read(0, S) == b"T" * 100 + bytes(S - 100)
            assert disk.read(128 * S, 128 * S) == b"\xdd" * (128 * S)
            assert disk.read(256 * S, 256 * S) == bytes(256 * S)
            with pytest.raises(InvalidState):
                disk.write(128 * S, b"\1" * S)  # an RDONLY extent
        assert f'RDONLY 128 FLAT "{device}" 64' in path.read_text()


def test_relative_partition_devices(tmp_path: Path) -> None:
    assert partition_device("/dev/sda", 3) == "/dev/sda3"
    assert partition_device("/dev/nvme0n1", 3) == "/dev/nvme0n1p3"
    device = tmp_path / "device.img"
    content = mbr_disk(device)
    (tmp_path / "device.img1").write_bytes(b"\xee" * (2048 * S))
    with Disk() as disk:
        disk.create_base(tmp_path / "r.vmdk", len(content), "VMDK", RAW,
                         config={"RawDrive": str(device), "Partitions": "1",
                                 "Relative": "1"})
        assert disk.read(2048 * S, 2048 * S) == b"\xee" * (2048 * S)


@pytest.mark.parametrize("config, why", [
    ({}, "RawDrive"),
    ({"RawDrive": "DEVICE", "Partitions": "9"}, "no partition 9"),
    ({"RawDrive": "DEVICE", "Partitions": "one"}, "partition numbers"),
    ({"RawDisk": "{not json"}, "not a valid raw-disk"),
    ({"RawDisk": RawDisk(partitions=(RawPartition(0, 100),))}, "multiple of 512"),
    ({"RawDisk": RawDisk(partitions=(RawPartition(0, 4096), RawPartition(512, 512)))},
     "overlap"),
])
def test_bad_raw_descriptions(tmp_path: Path, config: dict, why: str) -> None:
    device = tmp_path / "device.img"
    mbr_disk(device)
    config = {k: str(device) if v == "DEVICE" else v for k, v in config.items()}
    with Disk() as disk, pytest.raises(InvalidParameter) as info:
        disk.create_base(tmp_path / "x.vmdk", 8192 * S, "VMDK", RAW, config=config)
    assert why in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.img"]
