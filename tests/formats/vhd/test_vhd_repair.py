"""VDRepair on damaged VHD images, ours and qemu's.

qemu-img has no check for VHD, so the findings are compared with what VirtualBox's
repair does (noted per test), and repaired images must read in qemu exactly as we
read them (qemu-img compare against the expected content).
"""

from __future__ import annotations

import os
import random
import struct

import pytest

from tests import qemu
from vdgui.engine import Disk, ImageFlags, OpenFlags, RepairFlags, VDError, open_chain
from vdgui.engine.formats.vhd import VhdImage
from vdgui.engine.formats.vhd import footer as vf
from vdgui.engine.formats.vhd.check import check
from vdgui.engine.io import MemoryProvider
from vdgui.engine.io.journal import journal_path
from vdgui.engine.ops.repair import repair

from .helpers import MiB, bat, patch_header, poke, read_footer, read_header

KiB = 1024
BLOCK = 256 * KiB
SPAN = BLOCK + 512
SIZE = 2 * MiB
TABLE = 0x600


@pytest.fixture
def image(tmp_path):
    """A dynamic image with blocks 0..5 holding 0x01..0x06."""
    path = tmp_path / "d.vhd"
    with Disk() as disk:
        disk.create_base(path, SIZE, backend="VHD", config={"BlockSize": str(BLOCK)})
        for block in range(6):
            disk.write(block * BLOCK, bytes([block + 1]) * BLOCK)
    return path


def model(blocks: dict[int, int | None] | None = None) -> bytes:
    """The fixture's content, with ``blocks`` changed (None: zeros)."""
    data = bytearray(SIZE)
    for block in range(6):
        data[block * BLOCK:(block + 1) * BLOCK] = bytes([block + 1]) * BLOCK
    for block, value in (blocks or {}).items():
        data[block * BLOCK:(block + 1) * BLOCK] = bytes([value or 0]) * BLOCK
    return bytes(data)


def dry_then_repair(path):
    before = path.read_bytes()
    mtime = os.stat(path).st_mtime_ns
    dry = repair(path, flags=RepairFlags.DRY_RUN)
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime
    assert dry.problems and dry.repairable, dry.problems
    fixed = repair(path)
    assert fixed.repaired and fixed.clean, fixed.problems
    return dry


def reads(path, expected: bytes, tmp_path) -> None:
    """We and qemu both read ``expected``; the image opens read/write again."""
    with Disk() as disk:
        disk.open(path)  # read/write: no damage left
        assert disk.read(0, disk.size) == expected
    raw = path.read_bytes()
    assert raw[:512] == raw[-512:]
    reference = tmp_path / "expected.raw"
    reference.write_bytes(expected)
    assert qemu.compare(path, "vpc", reference, "raw")


def whats(report) -> str:
    return " | ".join(p.what for p in report.problems)


def set_entry(path, block: int, value: int) -> None:
    poke(path, TABLE + 4 * block, value.to_bytes(4, "big"))


def test_clean_images_are_clean(tmp_path, image):
    report = repair(image, flags=RepairFlags.DRY_RUN)
    assert report.clean and report.format == "VHD"
    fixed = tmp_path / "f.vhd"
    with Disk() as disk:
        disk.create_base(fixed, MiB, backend="VHD", image_flags=ImageFlags.FIXED)
        disk.create_diff(tmp_path / "diff.vhd", backend="VHD")
        disk.write(0, b"diff")
    for path in (fixed, tmp_path / "diff.vhd"):
        assert repair(path, flags=RepairFlags.DRY_RUN).clean


@pytest.mark.interop
@pytest.mark.parametrize("options", ["subformat=dynamic", "subformat=fixed"])
def test_qemu_images_are_clean(tmp_path, options):
    path = tmp_path / "q.vhd"
    qemu.qemu_img("create", "-f", "vpc", "-o", options, path, "5M")
    qemu.qemu_io(path, "vpc", "write -P 0x11 0 1M", "write -P 0x22 4M 4k")
    assert repair(path, flags=RepairFlags.DRY_RUN).clean


# -- footers ----------------------------------------------------------------------------------

@pytest.mark.interop
def test_missing_footer_is_rebuilt_from_the_copy(tmp_path, image):
    """VirtualBox: "Missing footer structure, using backup"."""
    image.write_bytes(image.read_bytes()[:-512])
    dry = dry_then_repair(image)
    assert [p.severity for p in dry.problems] == ["error"]
    assert "missing" in dry.problems[0].what
    reads(image, model(), tmp_path)


@pytest.mark.interop
def test_file_cut_inside_a_block_keeps_what_survived(tmp_path, image):
    """VirtualBox clears every entry past the end of the file; the part of the last
    block that survived is kept here, and the rest reads as zeros."""
    raw = image.read_bytes()
    image.write_bytes(raw[:-512 - BLOCK // 2])
    dry = dry_then_repair(image)
    assert "missing" in dry.problems[0].what
    assert "1 block runs past the end of the file" in whats(dry)
    expected = bytearray(model())
    expected[5 * BLOCK + BLOCK // 2:6 * BLOCK] = bytes(BLOCK // 2)
    reads(image, bytes(expected), tmp_path)
    assert image.stat().st_size == len(raw)


@pytest.mark.interop
@pytest.mark.parametrize("where", ["end", "copy", "both"])
def test_footer_checksums(tmp_path, image, where):
    """VirtualBox recomputes both checksums; an intact copy is preferred here, and a
    bad copy at offset 0 matters because qemu reads only that one (and refuses it)."""
    size = image.stat().st_size
    if where in ("end", "both"):
        poke(image, size - 512 + 40, b"\x01")  # original size: a checksum mismatch
    if where in ("copy", "both"):
        poke(image, 40, b"\x01")
        assert qemu.qemu_img("info", "-f", "vpc", image, check=False).returncode != 0
    dry = dry_then_repair(image)
    text = whats(dry)
    assert {"end": "at the end of the file has a bad checksum; its copy",
            "copy": "copy of the footer at offset 0 has a bad checksum",
            "both": "bad checksum and no intact copy"}[where] in text
    reads(image, model(), tmp_path)
    assert read_footer(image)["original_size"] == (SIZE if where != "both" else
                                                   SIZE + (1 << 56))


def test_copy_that_differs_is_rewritten_from_the_end(tmp_path, image):
    raw = bytearray(image.read_bytes())
    f = vf.FOOTER.unpack(raw)
    f["uuid"] = bytes(range(16))
    raw[:512] = vf.pack_footer(f)  # valid, but another disk's identity
    image.write_bytes(bytes(raw))
    dry = dry_then_repair(image)
    assert "differs" in whats(dry)
    assert image.read_bytes()[:512] == image.read_bytes()[-512:]


def test_no_footer_at_all_cannot_be_repaired(image):
    raw = bytearray(image.read_bytes())
    raw[:8] = raw[-512:-504] = b"xxxxxxxx"
    image.write_bytes(bytes(raw))
    report = repair(image, "VHD")
    assert not report.repaired and not report.repairable
    assert "no VHD footer" in report.problems[0].what
    assert image.read_bytes() == bytes(raw)


def test_fixed_footer_checksum(tmp_path):
    path = tmp_path / "f.vhd"
    with Disk() as disk:
        disk.create_base(path, MiB, backend="VHD", image_flags=ImageFlags.FIXED)
        disk.write(0, b"fixed")
    poke(path, MiB + 40, b"\x01")
    dry = dry_then_repair(path)
    assert "no intact copy" in whats(dry)  # a fixed disk has none
    with Disk() as disk:
        disk.open(path)
        assert disk.read(0, 5) == b"fixed"


# -- the dynamic header -------------------------------------------------------------------------

def test_header_checksum_is_recomputed(tmp_path, image):
    poke(image, 512 + 36, b"\0\0\0\0")
    dry = dry_then_repair(image)
    assert [p.offset for p in dry.problems] == [512 + 36]
    assert open_chain(image, OpenFlags.READONLY).read(0, SIZE) == model()


@pytest.mark.parametrize("change, message", [
    ({"cookie": b"xxxxxxxx"}, "no dynamic header"),
    ({"block_size": 3000}, "block size"),
    ({"max_table_entries": 2}, "too few"),
    ({"table_offset": 1 << 40}, "outside the file"),
])
def test_header_damage_cannot_be_repaired(image, change, message):
    """VirtualBox: a header or BAT outside the file makes the repair impossible."""
    patch_header(image, **change)
    before = image.read_bytes()
    report = repair(image)
    assert not report.repaired and message in whats(report)
    assert all(p.fix is None for p in report.problems)
    assert image.read_bytes() == before


# -- the block allocation table -------------------------------------------------------------------

@pytest.mark.interop
@pytest.mark.parametrize("value, why", [(0x100000, "beyond the end"), (2, "own metadata")])
def test_bad_entries_are_cleared(tmp_path, image, value, why):
    """VirtualBox clears entries beyond the file; entries into the metadata too."""
    set_entry(image, 7, value)
    dry = dry_then_repair(image)
    assert why in whats(dry) and dry.problems[0].offset == TABLE + 28
    reads(image, model(), tmp_path)


@pytest.mark.interop
@pytest.mark.parametrize("shift", [0, 1])
def test_blocks_referenced_twice(tmp_path, image, shift):
    """VirtualBox clears doubly referenced blocks; the first in the table is kept
    here, also when the two only overlap."""
    entries = bat(image)
    set_entry(image, 4, entries[1] + shift)
    dry = dry_then_repair(image)
    assert "block 4" in whats(dry) and "block 1" in whats(dry)
    assert any(p.severity == "leak" for p in dry.problems)  # block 4's old place
    reads(image, model({4: None}), tmp_path)
    assert image.stat().st_size == 0x800 + 5 * SPAN + 512


@pytest.mark.interop
def test_block_running_past_the_footer(tmp_path, image):
    """VirtualBox moves the footer after such a block; so do we, zeroing the old
    footer's bytes where the block's data should be."""
    raw = image.read_bytes()
    cut = len(raw) - 512 - BLOCK // 2
    image.write_bytes(raw[:cut] + raw[-512:])  # the footer now sits inside block 5
    dry = dry_then_repair(image)
    assert "1 block runs past the footer" in whats(dry)
    expected = bytearray(model())
    expected[5 * BLOCK + BLOCK // 2:6 * BLOCK] = bytes(BLOCK // 2)
    reads(image, bytes(expected), tmp_path)


def test_cleared_blocks_of_a_diff_read_zeros_not_the_parent(tmp_path, image):
    diff = tmp_path / "diff.vhd"
    with Disk() as disk:
        disk.open(image)
        disk.create_diff(diff, backend="VHD", config={"BlockSize": str(BLOCK)})
        disk.write(0, b"\x09" * (2 * BLOCK))
    entry = bat(diff)[1]
    table = read_header(diff)["table_offset"]
    poke(diff, table + 4, (0x100000).to_bytes(4, "big"))
    dry = dry_then_repair(diff)
    assert "block of zeros" in dry.problems[0].fix
    assert bat(diff)[1] != vf.BAT_FREE  # a new block (compacted into the old one's place)
    assert diff.stat().st_size == entry * 512 + SPAN + 512
    with open_chain(diff, OpenFlags.READONLY) as disk:
        assert disk.read(0, 2 * BLOCK) == b"\x09" * BLOCK + bytes(BLOCK)  # not 0x02
        assert disk.read(2 * BLOCK, 1) == b"\x03"


@pytest.mark.interop
def test_leaked_blocks_are_reclaimed(tmp_path, image):
    with Disk() as disk:
        disk.open(image)
        disk.image(0).unmap(BLOCK, 2 * BLOCK, zero=False)  # released, not compacted
    dry = dry_then_repair(image)
    assert [p.severity for p in dry.problems] == ["leak"]
    assert dry.leaked_bytes == 2 * SPAN
    assert image.stat().st_size == 0x800 + 4 * SPAN + 512
    reads(image, model({1: None, 2: None}), tmp_path)


def test_bad_locators_are_removed(tmp_path, image):
    diff = tmp_path / "diff.vhd"
    with Disk() as disk:
        disk.open(image)
        disk.create_diff(diff, backend="VHD")
    h = read_header(diff)
    entries = vf.unpack_locators(h["locators"])
    entries[0]["data_offset"] = 1 << 40   # W2ku: outside the file
    entries[1]["data_offset"] = 512       # W2ru: into the dynamic header
    patch_header(diff, locators=vf.pack_locators(entries))
    dry = dry_then_repair(diff)
    assert [p.offset for p in dry.problems] == [
        0x200 + 576, 0x200 + 576 + 24]
    with open_chain(diff, OpenFlags.READONLY) as disk:  # found by its name
        assert disk.count == 2 and disk.read(0, 1) == b"\x01"


def test_pending_journal_is_reported_and_completed(image):
    journal = journal_path(str(image))
    with open(journal, "wb") as handle:
        handle.write(b"VDJRNL01 incomplete")
    report = repair(image, flags=RepairFlags.DRY_RUN)
    assert [p.severity for p in report.problems] == ["warning"]
    assert repair(image).clean and not os.path.exists(journal)


@pytest.mark.interop
def test_damaged_qemu_image_reads_as_before_in_qemu(tmp_path):
    path = tmp_path / "q.vhd"
    qemu.qemu_img("create", "-f", "vpc", path, "6M")
    qemu.qemu_io(path, "vpc", "write -P 0x31 0 3M", "write -P 0x32 5M 64k")
    expected = qemu.to_raw(path, "vpc", tmp_path / "q.raw")
    raw = bytearray(path.read_bytes())
    raw[64:68] = b"\0\0\0\0"  # the copy qemu reads: qemu refuses the image
    path.write_bytes(bytes(raw[:-512]))  # and the footer at the end is gone
    assert qemu.qemu_img("info", "-f", "vpc", path, check=False).returncode != 0
    dry = repair(path, flags=RepairFlags.DRY_RUN)
    assert "no intact copy" in whats(dry)
    assert repair(path).clean
    assert qemu.to_raw(path, "vpc", tmp_path / "r.raw") == expected
    assert read_footer(path)["creator_app"] == b"qemu"


# -- hostile input ---------------------------------------------------------------------------------

def test_mutated_images_check_cleanly_and_repair_completely():
    """Any damage: the check raises only VDErrors and writes nothing; a repair that
    claims to fix everything leaves a clean image that opens read/write."""
    io = MemoryProvider()
    with Disk(io=io) as disk:
        disk.create_base("/b.vhd", MiB, backend="VHD", config={"BlockSize": "64K"})
        disk.write(0, b"\x01" * 200000)
        disk.create_diff("/d.vhd", backend="VHD", config={"BlockSize": "64K"})
        disk.write(100000, b"\x02" * 300000)
    seeds = {name: io.get(name) for name in ("/b.vhd", "/d.vhd")}
    rng = random.Random(1)
    words = [0, 1, 2, 0x1FF, 0x200, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]
    for _ in range(150):
        name = rng.choice(sorted(seeds))
        data = bytearray(seeds[name])
        for _ in range(rng.randint(1, 3)):
            near = rng.choice([(0, 2048), (TABLE, TABLE + 160), (len(data) - 512, len(data)),
                               (0, len(data))])
            offset = rng.randrange(*near) if len(data) > near[1] - 1 else 0
            kind = rng.random()
            if kind < 0.4:
                data[offset:offset + 1] = bytes([data[offset % len(data)] ^ 0x5A])
            elif kind < 0.8:
                data[offset:offset + 4] = struct.pack(">I", rng.choice(words))
            else:
                del data[offset:]
        files = MemoryProvider()
        for other, raw in seeds.items():
            files.put(other, raw)
        files.put(name, bytes(data))
        try:
            found = check(files, name, False)
        except VDError:
            continue
        assert files.get(name) == bytes(data)
        if found and all(p.fix for p in found):
            check(files, name, True)
            assert check(files, name, False) == []
            VhdImage.open(files, name, OpenFlags.NORMAL).close()
