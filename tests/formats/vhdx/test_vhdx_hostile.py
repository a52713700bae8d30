"""Damaged and hostile VHDX files: a VDError naming the problem, nothing else."""

from __future__ import annotations

import random
import struct
import uuid

import pytest

from vdgui.engine import OpenFlags, errors, open_chain, probe
from vdgui.engine.formats.vhdx import headers as vh
from vdgui.engine.formats.vhdx import metadata as vm

from tests.formats.clustered import digest, engine_write, poke
from tests.formats.vhdx import helpers as h

MiB = 1 << 20


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.vhdx"
    h.create(path, 8 * MiB, block_size="1M")
    engine_write(path, [(0, 4096, 0x11), (5 * MiB, MiB, 0x22)])
    return path


def read_all(path) -> None:
    """Probe, open read-only and read everything: VDError is the only way to fail."""
    try:
        probe(str(path))
        with open_chain(path, OpenFlags.READONLY) as disk:
            disk.read(0, disk.size)
            disk.dump()
    except errors.VDError:
        pass


def metadata_offset(path, item) -> int:
    r = h.regions(path)["metadata"]
    return r.offset + next(o for g, o, _, _ in h.metadata_table(path) if g == item)


@pytest.mark.parametrize("length", [0, 7, 8, 100, 64 << 10, (64 << 10) + 10, 200 << 10,
                                    300 << 10, MiB, 2 * MiB + 8, 3 * MiB + 100, 4 * MiB,
                                    5 * MiB + 4096, 6 * MiB - 1])
def test_truncated_files(image, length):
    with open(image, "r+b") as f:
        f.truncate(length)
    before = digest(image)
    read_all(image)
    assert digest(image) == before


def test_bat_region_past_the_end_of_the_file(image):
    table = h.regions(image)
    h.write_regions(image, [vh.Region(table["BAT"].guid, 1 << 30, MiB, True),
                            table["metadata"]])
    with pytest.raises(errors.Corrupted, match="truncated"):
        open_chain(image, OpenFlags.READONLY)


@pytest.mark.parametrize("offset", [1 << 50, (1 << 63) + (1 << 20), (1 << 64) - (1 << 20)])
def test_region_offsets_beyond_any_file(image, offset):
    table = h.regions(image)
    h.write_regions(image, [vh.Region(table["BAT"].guid, offset, MiB, True),
                            table["metadata"]])
    with pytest.raises(errors.Corrupted, match="1 MiB aligned area"):
        open_chain(image, OpenFlags.READONLY)


def test_regions_that_overlap(image):
    table = h.regions(image)
    h.write_regions(image, [table["BAT"],
                            vh.Region(table["metadata"].guid, table["BAT"].offset, MiB, True)])
    with pytest.raises(errors.Corrupted, match="overlap"):
        open_chain(image, OpenFlags.READONLY)


@pytest.mark.parametrize("block_size", [0, 512, 3 * MiB, 512 * MiB, 0xFFFFFFFF])
def test_absurd_block_sizes(image, block_size):
    poke(image, metadata_offset(image, vm.FILE_PARAMETERS), struct.pack("<I", block_size))
    with pytest.raises(errors.Corrupted, match="block size"):
        open_chain(image, OpenFlags.READONLY)


@pytest.mark.parametrize("item, value", [
    (vm.LOGICAL_SECTOR_SIZE, struct.pack("<I", 1024)),   # chunk ratio would not divide
    (vm.PHYSICAL_SECTOR_SIZE, struct.pack("<I", 0)),
    (vm.VIRTUAL_DISK_SIZE, struct.pack("<Q", 0)),
    (vm.VIRTUAL_DISK_SIZE, struct.pack("<Q", 1 << 62)),
    (vm.VIRTUAL_DISK_SIZE, struct.pack("<Q", 8 * MiB + 100)),
])
def test_absurd_metadata_values(image, item, value):
    poke(image, metadata_offset(image, item), value)
    with pytest.raises(errors.Corrupted):
        open_chain(image, OpenFlags.READONLY)


def test_a_larger_disk_than_its_bat_can_map(image):
    poke(image, metadata_offset(image, vm.VIRTUAL_DISK_SIZE), struct.pack("<Q", 1 << 40))
    with pytest.raises(errors.Corrupted, match="too small"):
        open_chain(image, OpenFlags.READONLY)


def test_metadata_item_outside_the_region(image):
    r = h.regions(image)["metadata"]
    entry = r.offset + vm.TABLE_HEADER.size + 1 * vm.TABLE_ENTRY.size + 16
    poke(image, entry, struct.pack("<II", MiB - 4, 8))
    with pytest.raises(errors.Corrupted, match="outside the metadata region"):
        open_chain(image, OpenFlags.READONLY)


def test_missing_and_unknown_metadata_items(image):
    r = h.regions(image)["metadata"]
    first_entry = r.offset + vm.TABLE_HEADER.size
    poke(image, first_entry, uuid.uuid4().bytes_le)  # file parameters now unknown...
    with pytest.raises(errors.NotSupported, match="unknown metadata item"):
        open_chain(image, OpenFlags.READONLY)   # ...and required
    poke(image, first_entry + 24, struct.pack("<I", 0))  # not required any more
    with pytest.raises(errors.Corrupted, match="no file parameters"):
        open_chain(image, OpenFlags.READONLY)


def test_a_block_pointing_into_the_metadata_is_read_only(image):
    h.set_bat(image, 2, h.regions(image)["metadata"].offset | 6)
    with open_chain(image, OpenFlags.READONLY) as disk:
        disk.read(0, disk.size)
        assert "overlaps the metadata region" in dict(disk[0].describe())["damage"]
        with pytest.raises(errors.Corrupted, match="can be read but not written"):
            disk.set_open_flags(0, OpenFlags.NORMAL)
    with pytest.raises(errors.Corrupted, match="can be read but not written"):
        open_chain(image)


def test_two_blocks_sharing_one_place_are_read_only(image):
    entries = h.bat(image, 6)
    h.set_bat(image, 1, entries[5])
    with pytest.raises(errors.Corrupted, match="share"):
        open_chain(image)


@pytest.mark.parametrize("offset", [1 << 50, 1 << 63])
def test_block_beyond_any_file_is_read_only(image, offset):
    h.set_bat(image, 3, offset | 6)
    with open_chain(image, OpenFlags.READONLY) as disk:
        with pytest.raises(errors.VDError):
            disk.read(3 * MiB, 512)
    with pytest.raises(errors.Corrupted, match="beyond any possible end"):
        open_chain(image)


def test_block_past_the_end_of_the_file(image):
    h.set_bat(image, 3, (1 << 40) | 6)
    with open_chain(image, OpenFlags.READONLY) as disk:
        with pytest.raises(errors.Corrupted, match="beyond the end"):
            disk.read(3 * MiB, 512)


def test_hostile_parent_locator(image, tmp_path):
    child = tmp_path / "c.vhdx"
    with open_chain(image, OpenFlags.READONLY) as disk:
        disk.create_diff(child, "VHDX")
    at = metadata_offset(child, vm.PARENT_LOCATOR)
    poke(child, at + vm.LOCATOR_HEADER.size, struct.pack("<II", 1 << 20, 0))
    with pytest.raises(errors.Corrupted, match="parent locator"):
        open_chain(child, OpenFlags.READONLY)


def test_log_outside_the_file(image):
    header = h.current_header(image)
    h.write_header(image, header.successor(log_guid=uuid.uuid4(), log_offset=1 << 30))
    with pytest.raises(errors.VDError):
        open_chain(image, OpenFlags.READONLY)


def test_unaligned_log(image):
    header = h.current_header(image)
    h.write_header(image, header.successor(log_offset=MiB + 4096))
    with pytest.raises(errors.Corrupted, match="not aligned"):
        open_chain(image, OpenFlags.READONLY)


def test_random_damage_in_the_metadata(image):
    raw = image.read_bytes()
    rng = random.Random(1234)
    targets = [(0, 400 << 10), (MiB, 4 * MiB)]  # headers, region tables, log, BAT, metadata
    for _ in range(60):
        damaged = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            lo, hi = rng.choice(targets)
            damaged[rng.randrange(lo, hi)] = rng.randrange(256)
        image.write_bytes(bytes(damaged))
        read_all(image)
