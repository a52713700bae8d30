"""VDRepair on damaged VMDK images, made by qemu and by us: a dry run reports and
changes nothing; whatever ``qemu-img check`` finds, we find too; a repaired image
is clean, passes ``qemu-img check`` and reads as it should."""

from __future__ import annotations

import os
import random
import re
import struct
from pathlib import Path
from typing import Callable

import pytest

from tests import qemu
from vdgui.engine import Disk, ImageFlags, OpenFlags, RepairFlags, open_chain
from vdgui.engine.errors import VDError
from vdgui.engine.formats.vmdk import VmdkImage
from vdgui.engine.io import MemoryProvider
from vdgui.engine.ops.repair import repair

MiB = 1 << 20
GRAIN = 65536
SIZE = 10 * MiB

pytestmark = pytest.mark.skipif(not qemu.have_qemu(), reason="qemu-img is not installed")


def fields(raw: bytes) -> dict:
    names = ("version", "flags", "capacity", "grain", "desc_offset", "desc_size", "gtes",
             "rgd", "gd", "overhead")
    return dict(zip(names, struct.unpack_from("<IIQQQQIQQQ", raw, 4)))


def u32(raw: bytearray, offset: int, value: int | None = None) -> int:
    if value is not None:
        struct.pack_into("<I", raw, offset, value)
    return struct.unpack_from("<I", raw, offset)[0]


def gt(raw: bytes, redundant: bool = False) -> int:
    """File offset of the first grain table (or its mirror)."""
    h = fields(raw)
    return u32(bytearray(raw), (h["rgd"] if redundant else h["gd"]) * 512) * 512


def made_by_qemu(path: Path) -> bytearray:
    qemu.qemu_img("create", "-f", "vmdk", path, str(SIZE))
    qemu.qemu_io(path, "vmdk", "write -P 0x11 0 128k", "write -P 0x22 5M 64k")
    return model()


def made_by_us(path: Path) -> bytearray:
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK")
        disk.write(0, b"\x11" * (2 * GRAIN))
        disk.write(5 * MiB, b"\x22" * GRAIN)
    return model()


def model() -> bytearray:
    content = bytearray(SIZE)
    content[:2 * GRAIN] = b"\x11" * (2 * GRAIN)
    content[5 * MiB:5 * MiB + GRAIN] = b"\x22" * GRAIN
    return content


def zero_grain(content: bytearray, grain: int) -> None:
    content[grain * GRAIN:(grain + 1) * GRAIN] = bytes(GRAIN)


# Each damage changes the file and says how the repaired disk reads (None: as before).
Damage = Callable[[bytearray], Callable[[bytearray], None] | None]


def entry_past_eof(raw: bytearray):
    u32(raw, gt(raw) + 4, 100000)  # the redundant table still has it right


def entry_past_eof_in_both(raw: bytearray):
    u32(raw, gt(raw) + 4, 100000)
    u32(raw, gt(raw, True) + 4, 100000)
    return lambda content: zero_grain(content, 1)


def entry_into_metadata(raw: bytearray):
    u32(raw, gt(raw) + 4, 5)
    u32(raw, gt(raw, True) + 4, 5)
    return lambda content: zero_grain(content, 1)


def grain_used_twice(raw: bytearray):
    for redundant in (False, True):
        u32(raw, gt(raw, redundant) + 8, u32(raw, gt(raw, redundant)))
    # grain 2 read grain 0's data; the repair frees it (a base reads zeros there)


def directory_entry_garbage(raw: bytearray):
    u32(raw, fields(raw)["gd"] * 512, 9999)


def directory_sector_zeroed(raw: bytearray):
    at = fields(raw)["gd"] * 512
    raw[at:at + 512] = bytes(512)


def directory_points_into_data(raw: bytearray):
    u32(raw, fields(raw)["gd"] * 512, u32(raw, gt(raw) + 4 * 80))  # at grain 80's data


def redundant_entry_garbage(raw: bytearray):
    u32(raw, fields(raw)["rgd"] * 512, 0xFFFFFF)


def mirror_disagrees(raw: bytearray):
    u32(raw, gt(raw, True) + 4, 0)


def cut_inside_a_grain(raw: bytearray):
    del raw[len(raw) - 1000:]
    return lambda content: content.__setitem__(slice(5 * MiB + GRAIN - 1000, 5 * MiB + GRAIN),
                                               bytes(1000))


def leaked_tail(raw: bytearray):
    raw.extend(b"\xee" * GRAIN)


def unclean(raw: bytearray):
    raw[0x48] = 1


def bad_cid(raw: bytearray):
    at = raw.index(b"CID=") + 4
    raw[at:at + 4] = b"zzzz"


def malformed_line(raw: bytearray):
    at = raw.index(b"createType")
    raw[at:at + 4] = b"c re"


DAMAGES: dict[str, Damage] = {f.__name__: f for f in (
    entry_past_eof, entry_past_eof_in_both, entry_into_metadata, grain_used_twice,
    directory_entry_garbage, directory_sector_zeroed, directory_points_into_data,
    redundant_entry_garbage, mirror_disagrees, cut_inside_a_grain, leaked_tail, unclean,
    bad_cid, malformed_line)}


def dry_run(path: Path):
    files = sorted(path.parent.iterdir())
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in files}
    report = repair(path, "VMDK", RepairFlags.DRY_RUN)
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in files} == before
    assert sorted(path.parent.iterdir()) == files
    return report


def qemu_sectors(result) -> list[int]:
    return [int(n) for n in re.findall(r"sector (\d+) points after EOF", result.stderr)]


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("maker", [made_by_qemu, made_by_us], ids=["qemu", "ours"])
def test_damage_is_found_and_repaired(tmp_path: Path, maker, damage: str) -> None:
    path = tmp_path / "d.vmdk"
    expected = maker(path)
    if damage == "directory_points_into_data":  # needs a grain 80 to point into
        with Disk() as disk:
            disk.open(path)
            disk.write(80 * GRAIN, b"\x33" * GRAIN)
        expected[80 * GRAIN:81 * GRAIN] = b"\x33" * GRAIN
    raw = bytearray(path.read_bytes())
    effect = DAMAGES[damage](raw)
    if effect:
        effect(expected)
    path.write_bytes(raw)
    theirs = qemu.check(path, "vmdk")
    report = dry_run(path)
    assert not report.clean and report.repairable, report.problems
    for sector in qemu_sectors(theirs):  # what qemu names, we name
        assert any(f"disk offset {sector * 512}" in p.what for p in report.problems)
    fixed = repair(path, "VMDK")
    assert fixed.repaired and fixed.clean, fixed.problems
    assert qemu.check(path, "vmdk").returncode == 0
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(0, SIZE) == expected
    (tmp_path / "model.raw").write_bytes(expected)
    assert qemu.compare(path, "vmdk", tmp_path / "model.raw", "raw")


def test_clean_images_are_clean(tmp_path: Path) -> None:
    made_by_qemu(tmp_path / "q.vmdk")
    qemu.qemu_img("create", "-f", "vmdk", "-o", "subformat=streamOptimized",
                  tmp_path / "qs.vmdk", "4M")
    qemu.qemu_io(tmp_path / "qs.vmdk", "vmdk", "write -P 0x11 0 128k")
    qemu.qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
                  tmp_path / "q2.vmdk", "4M")
    qemu.qemu_img("create", "-f", "vmdk", "-b", "q.vmdk", "-F", "vmdk", tmp_path / "qc.vmdk")
    qemu.qemu_io(tmp_path / "qc.vmdk", "vmdk", "write -P 0x44 64k 64k")
    for flags in (ImageFlags.NONE, ImageFlags.FIXED, ImageFlags.VMDK_SPLIT_2G,
                  ImageFlags.VMDK_STREAM_OPTIMIZED):
        with Disk() as disk:
            disk.create_base(tmp_path / f"o{int(flags)}.vmdk", 4 * MiB, "VMDK", flags)
            disk.write(0, os.urandom(3 * GRAIN))
    for path in tmp_path.glob("*.vmdk"):
        if "-" not in path.name:
            report = dry_run(path)
            assert report.clean, (path.name, report.problems)


def test_header_damage_cannot_be_repaired(tmp_path: Path) -> None:
    path = tmp_path / "d.vmdk"
    made_by_us(path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<Q", raw, 0x14, 3)  # grain size
    path.write_bytes(raw)
    report = repair(path, "VMDK")
    assert not report.clean and not report.repaired
    assert report.problems[0].fix is None and "grain size" in report.problems[0].what
    assert path.read_bytes() == raw


def test_differencing_image_clears_to_zeros_not_to_the_parent(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    with Disk() as disk:
        disk.create_base(base, SIZE, "VMDK")
        disk.write(0, b"\x01" * (2 * MiB))
        disk.create_diff(child, "VMDK")
        disk.write(MiB, b"\x02" * (2 * GRAIN))
    raw = bytearray(child.read_bytes())
    for redundant in (False, True):
        u32(raw, gt(raw, redundant) + 4 * 16, 0x7FFFFFFF)  # grain 16 (1 MiB) lost
    child.write_bytes(raw)
    report = dry_run(child)
    assert [p.fix for p in report.problems if p.severity == "error"] == \
        ["make the grain read as zeros"]
    assert repair(child, "VMDK").clean
    with open_chain(child, OpenFlags.READONLY) as disk:
        assert disk.read(MiB, GRAIN) == bytes(GRAIN)  # not the parent's \x01
        assert disk.read(MiB + GRAIN, GRAIN) == b"\x02" * GRAIN
    assert qemu.check(child, "vmdk").returncode == 0


@pytest.mark.parametrize("maker", ["qemu", "ours"])
def test_parent_cid_mismatch_is_fixed(tmp_path: Path, maker: str) -> None:
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    if maker == "qemu":
        qemu.qemu_img("create", "-f", "vmdk", base, str(SIZE))
        qemu.qemu_img("create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
        qemu.qemu_io(base, "vmdk", "write -P 0x05 0 512")  # the parent's CID changes
    else:
        with Disk() as disk:
            disk.create_base(base, SIZE, "VMDK")
            disk.create_diff(child, "VMDK")
        with open_chain(base) as disk:
            disk.write(0, b"\x05" * 512)
    report = dry_run(child)
    assert [p.severity for p in report.problems] == ["warning"]
    assert "parentCID" in report.problems[0].what
    assert repair(child, "VMDK").clean
    qemu.qemu_io(child, "vmdk", "read -P 0x05 0 512")  # qemu follows the chain


def test_split_image_extent_problems(tmp_path: Path) -> None:
    path = tmp_path / "s.vmdk"
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK", ImageFlags.VMDK_SPLIT_2G)
        disk.write(0, b"\x07" * (3 * GRAIN))
    extent = tmp_path / "s-s001.vmdk"
    raw = bytearray(extent.read_bytes())
    directory_sector_zeroed(raw)
    extent.write_bytes(raw)
    report = dry_run(path)
    assert all(p.what.startswith("s-s001.vmdk: ") for p in report.problems)
    assert repair(path, "VMDK").clean
    with open_chain(path, OpenFlags.READONLY) as disk:
        assert disk.read(0, 3 * GRAIN) == b"\x07" * (3 * GRAIN)
    extent.rename(tmp_path / "elsewhere.vmdk")
    report = dry_run(path)
    assert [(p.severity, p.fix) for p in report.problems] == [("error", None)]
    assert "missing" in report.problems[0].what


def test_extents_outside_the_folder_are_not_followed(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"KDMV" + bytes(508))
    (inner / "d.vmdk").write_text('# Disk DescriptorFile\nversion=1\nCID=12345678\n'
                                  'parentCID=ffffffff\ncreateType="monolithicFlat"\n'
                                  'RW 1 FLAT "../secret.bin" 0\n')
    report = dry_run(inner / "d.vmdk")
    assert [p.severity for p in report.problems] == ["warning"]
    assert "outside" in report.problems[0].what


def test_flat_extent_too_short(tmp_path: Path) -> None:
    path = tmp_path / "f.vmdk"
    with Disk() as disk:
        disk.create_base(path, SIZE, "VMDK", ImageFlags.FIXED)
    os.truncate(tmp_path / "f-flat.vmdk", SIZE // 2)
    report = dry_run(path)
    assert [p.severity for p in report.problems] == ["warning"]
    assert repair(path, "VMDK").clean
    assert os.path.getsize(tmp_path / "f-flat.vmdk") == SIZE


@pytest.mark.parametrize("maker", ["qemu", "ours"])
def test_streams_are_reported_not_repaired(tmp_path: Path, maker: str) -> None:
    path = tmp_path / "s.vmdk"
    if maker == "qemu":
        qemu.qemu_img("create", "-f", "vmdk", "-o", "subformat=streamOptimized", path, "4M")
        qemu.qemu_io(path, "vmdk", "write -P 0x11 0 128k")
    else:
        with Disk() as disk:
            disk.create_base(path, 4 * MiB, "VMDK", ImageFlags.VMDK_STREAM_OPTIMIZED)
            disk.write(0, os.urandom(2 * GRAIN))
    raw = bytearray(path.read_bytes())
    first = fields(raw)["overhead"] * 512  # the first grain record
    raw[first + 20:first + 40] = b"\xff" * 20
    path.write_bytes(raw)
    report = repair(path, "VMDK")
    assert not report.repaired and path.read_bytes() == raw
    assert any("deflate" in p.what and p.fix is None for p in report.problems)
    if maker == "ours":  # the end of the stream: footer and end-of-stream marker
        del raw[-512:]
        path.write_bytes(raw)
        report = repair(path, "VMDK")
        assert [p.fix for p in report.problems] == [None]
        assert "footer" in report.problems[0].what and path.read_bytes() == raw


# -- robustness: mutated images ---------------------------------------------------------


def seeds(tmp_path: Path) -> dict[str, dict[str, bytes]]:
    out = {}
    for name, flags, config in (("mono", ImageFlags.NONE, {}),
                                ("zeroed", ImageFlags.NONE, {"ZeroedGrain": "1"}),
                                ("stream", ImageFlags.VMDK_STREAM_OPTIMIZED, {}),
                                ("split", ImageFlags.VMDK_SPLIT_2G, {})):
        folder = tmp_path / name
        folder.mkdir()
        with Disk() as disk:
            disk.create_base(folder / "d.vmdk", MiB, "VMDK", flags, config=config)
            disk.write(0, os.urandom(2 * GRAIN))
            disk.write(8 * GRAIN, bytes(GRAIN))
            disk.write(12 * GRAIN, b"\x09" * GRAIN)
        out[name] = {p.name: p.read_bytes() for p in folder.iterdir()}
    folder = tmp_path / "child"  # a differencing image: cleared grains must read zeros
    folder.mkdir()
    with Disk() as disk:
        disk.create_base(folder / "base.vmdk", MiB, "VMDK")
        disk.write(0, b"\x01" * MiB)
        disk.create_diff(folder / "d.vmdk", "VMDK")
        disk.write(GRAIN, os.urandom(3 * GRAIN))
    out["child"] = {p.name: p.read_bytes() for p in folder.iterdir()}
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        at = rng.randrange(len(out)) if rng.random() < 0.5 else rng.randrange(min(len(out),
                                                                               16384))
        kind = rng.choice(["byte", "word", "word", "cut", "zeros"])
        if kind == "byte":
            out[at] ^= rng.randrange(1, 256)
        elif kind == "word":
            value = rng.choice([0, 1, 2, 5, 0x7F, 0x80, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                                len(out) // 512, len(out) // 512 - 1, 1 << 40])
            out[at:at + 4] = struct.pack("<I", value & 0xFFFFFFFF)
        elif kind == "cut":
            del out[at:]
        else:
            out[at:at + rng.randrange(1, 4096)] = bytes(min(len(out) - at, 4096))
    return bytes(out)


def test_mutated_images_check_cleanly(tmp_path: Path) -> None:
    """A check never raises anything but VDError and never writes; a repair leaves
    nothing a second repair would fix."""
    rng = random.Random(int(os.environ.get("VDGUI_FUZZ_SEED", "1234")))
    examples = int(os.environ.get("VDGUI_FUZZ_EXAMPLES", "12")) * 6
    for name, files in seeds(tmp_path).items():
        for _ in range(examples):
            target = rng.choice(sorted(files))
            mutated = dict(files, **{target: mutate(rng, files[target])})
            io = MemoryProvider()
            for path, data in mutated.items():
                io.put(f"/img/{path}", data)
            try:
                VmdkImage.check(io, "/img/d.vmdk", False)
            except VDError:
                continue
            assert {p: io.get(f"/img/{p}") for p in mutated} == mutated, "a check wrote"
            try:
                VmdkImage.check(io, "/img/d.vmdk", True)
                after = VmdkImage.check(io, "/img/d.vmdk", False)
            except VDError:
                continue
            left = [f for f in after if f.fix]
            assert not left, (name, target, left)


def test_vmfs_sparse_extents_are_checked_not_repaired(tmp_path: Path) -> None:
    from tests.formats.vmdk.test_hostile import cowd_file
    cowd_file(tmp_path / "d-delta.vmdk")
    (tmp_path / "d.vmdk").write_text(
        '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n'
        'createType="vmfsSparse"\nRW 2048 VMFSSPARSE "d-delta.vmdk"\n')
    assert dry_run(tmp_path / "d.vmdk").clean
    raw = bytearray((tmp_path / "d-delta.vmdk").read_bytes())
    u32(raw, 5 * 512 + 4 * 3, 4000)  # grain 3 past the end
    (tmp_path / "d-delta.vmdk").write_bytes(raw)
    report = repair(tmp_path / "d.vmdk", "VMDK")
    assert [(p.severity, p.fix) for p in report.problems] == [("error", None)]
    assert "past the end" in report.problems[0].what and not report.repaired


def test_an_interrupted_repair_can_be_run_again(tmp_path: Path) -> None:
    """Cut short after every number of writes, a repair leaves an image that the
    next repair finishes; the content is the same either way."""
    from vdgui.engine.io import Fault, FaultyProvider, FileProvider
    from vdgui.engine.io.faulty import SimulatedCrash
    reference = tmp_path / "reference.vmdk"
    expected = made_by_us(reference)
    raw = bytearray(reference.read_bytes())
    entry_past_eof(raw)
    directory_sector_zeroed(raw)
    leaked_tail(raw)
    unclean(raw)
    n = 0
    while True:
        path = tmp_path / f"run{n}" / "d.vmdk"
        path.parent.mkdir()
        path.write_bytes(raw)
        faulty = FaultyProvider(FileProvider(), Fault(after_writes=n))
        try:
            VmdkImage.check(faulty, str(path), True)
            finished = True
        except SimulatedCrash:
            finished = False
        assert repair(path, "VMDK").clean
        with open_chain(path, OpenFlags.READONLY) as disk:
            assert disk.read(0, SIZE) == expected
        if finished:
            break
        n += 1
    assert n > 3
    assert qemu.check(path, "vmdk").returncode == 0
