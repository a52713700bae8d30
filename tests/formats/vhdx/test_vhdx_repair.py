"""VHDX check and repair on damaged images, made by qemu-img and by us.

For every kind of damage: the check names it and changes no byte; whatever
``qemu-img check`` finds on the same file, ours finds too (qemu misses several
kinds); the repair fixes exactly what was reported, a second check is clean, the
content is what survived the damage, and qemu-img agrees with the result.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
from pathlib import Path
import pytest

from vdgui.engine import RepairFlags, errors, open_chain
from vdgui.engine.formats.vhdx import VhdxImage
from vdgui.engine.formats.vhdx import bat as vb
from vdgui.engine.formats.vhdx import headers as vh
from vdgui.engine.formats.vhdx import log as vl
from vdgui.engine.io import default_provider, journal
from vdgui.engine.ops.repair import repair

from tests import qemu
from tests.formats.clustered import digest, engine_read, expected, peek, poke, qemu_write
from tests.formats.vhdx import helpers as h

MiB = 1 << 20
SIZE = 10 * MiB
WRITES = [(0, 3 * MiB, 0x31), (5 * MiB + 4096, 8192, 0x32), (SIZE - 512, 512, 0x33)]
#: Payload blocks holding data.
STORED = (0, 1, 2, 5, 9)


def make(path: Path, creator: str) -> None:
    if creator == "qemu":
        qemu.qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", path, str(SIZE))
        qemu_write(path, "vhdx", WRITES)
    else:
        h.create(path, SIZE, block_size="1M")
        with open_chain(path) as disk:
            for offset, length, byte in WRITES:
                disk.write(offset, bytes([byte]) * length)


def block_at(path: Path, block: int) -> int:
    return h.bat(path, block + 1)[block] >> 20 << 20


def corrupt(path: Path, offset: int) -> None:
    poke(path, offset, bytes([peek(path, offset, 1)[0] ^ 0xFF]))


def zeroed(*blocks: int, base: bytes | None = None) -> bytes:
    """The model with ``blocks`` reading zeros."""
    model = bytearray(base if base is not None else expected(SIZE, WRITES))
    for block in blocks:
        model[block * MiB:(block + 1) * MiB] = bytes(MiB)
    return bytes(model)


# -- the damage ------------------------------------------------------------------------
# Each returns the content expected after the repair.

def header_crc(path):
    corrupt(path, vh.HEADER_OFFSETS[0] + 100)
    return expected(SIZE, WRITES)


def header_tie(path):
    current = h.current_header(path)
    h.write_header(path, vh.Header(**{**current.__dict__, "slot": 1 - current.slot,
                                      "file_write_guid": uuid.uuid4()}))
    return expected(SIZE, WRITES)


def region_table_1(path):
    corrupt(path, vh.REGION_OFFSETS[0] + 200)
    return expected(SIZE, WRITES)


def region_table_2(path):
    corrupt(path, vh.REGION_OFFSETS[1] + 5)
    return expected(SIZE, WRITES)


def region_tables_differ(path):
    table = list(h.regions(path).values())
    h.write_regions(path, table[::-1], copies=(1,))
    return expected(SIZE, WRITES)


def block_beyond_the_file(path):
    h.set_bat(path, 2, (100 * MiB) | vb.FULLY_PRESENT)
    return zeroed(2)


def block_in_the_metadata(path):
    h.set_bat(path, 1, h.regions(path)["metadata"].offset | vb.FULLY_PRESENT)
    return zeroed(1)


def block_in_the_log(path):
    h.set_bat(path, 9, h.current_header(path).log_offset | vb.FULLY_PRESENT)
    return zeroed(9)


def blocks_sharing_space(path):
    h.set_bat(path, 5, block_at(path, 1) | vb.FULLY_PRESENT)
    return zeroed(5)


def file_cut_short(path):
    last = max(block_at(path, b) for b in STORED)
    last_block = next(b for b in STORED if block_at(path, b) == last)
    os.truncate(path, last + MiB // 2)
    model = bytearray(expected(SIZE, WRITES))
    start = last_block * MiB + MiB // 2
    model[start:(last_block + 1) * MiB] = bytes(MiB // 2)
    return bytes(model)


def leaked_tail(path):
    with open(path, "ab") as f:
        f.write(b"\x99" * 3 * MiB)
    return expected(SIZE, WRITES)


def leaked_block(path):
    h.set_bat(path, 0, vb.NOT_PRESENT)  # its space stays, used by nothing
    return zeroed(0)


def zero_block_with_an_offset(path):
    h.set_bat(path, 3, (40 * MiB) | vb.ZERO)
    return expected(SIZE, WRITES)


def partial_block_in_a_base(path):
    h.set_bat(path, 1, block_at(path, 1) | vb.PARTIALLY_PRESENT)
    return expected(SIZE, WRITES)


def log_marked_in_use_but_empty(path):
    h.write_header(path, h.current_header(path).successor(log_guid=uuid.uuid4()))
    return expected(SIZE, WRITES)


def log_left_pending(path):
    """What a crash between qemu's log write and its BAT update leaves."""
    log = path.read_bytes()[MiB:2 * MiB]
    entries = [vl.ENTRY_HEADER.unpack(log, at) for at in range(0, MiB, 4096)
               if log[at:at + 4] == b"loge"]
    # qemu leaves its entries behind, each with a log GUID of its own.
    log_guid = uuid.UUID(bytes_le=max(entries, key=lambda e: e["sequence"])["log_guid"])
    h.set_bat(path, 9, vb.ZERO)
    h.write_header(path, h.current_header(path).successor(log_guid=log_guid))
    return expected(SIZE, WRITES)


DAMAGE = [header_crc, header_tie, region_table_1, region_table_2, region_tables_differ,
          block_beyond_the_file, block_in_the_metadata, block_in_the_log,
          blocks_sharing_space, file_cut_short, leaked_tail, leaked_block,
          zero_block_with_an_offset, partial_block_in_a_base, log_marked_in_use_but_empty,
          log_left_pending]
#: What ``qemu-img check`` notices (or refuses to open); it misses the rest.
QEMU_SEES = {header_tie, region_table_1, block_beyond_the_file, block_in_the_metadata,
             block_in_the_log, file_cut_short, log_left_pending}
#: Where our own layout (no gap after the metadata) makes a difference.
OURS_TOO = {header_crc, region_table_1, blocks_sharing_space, file_cut_short, leaked_block,
            log_left_pending}


def qemu_entries(stderr: str) -> set[int]:
    """The BAT entries qemu-img check names."""
    return {int(n) for n in re.findall(r"BAT entry (\d+)", stderr)}


def check_then_repair(path: Path, model: bytes, tmp_path: Path, qemu_sees: bool) -> list:
    """The findings; asserts every property of the check and the repair."""
    qemu_before = qemu.check(path, "vhdx")
    assert bool(qemu_before.returncode) == qemu_sees, qemu_before.stderr
    before, mtime = digest(path), os.stat(path).st_mtime_ns
    dry = repair(path, flags=RepairFlags.DRY_RUN)
    assert digest(path) == before and os.stat(path).st_mtime_ns == mtime
    assert not dry.clean
    if qemu_sees:  # whatever qemu finds, we find
        assert any(p.severity in ("error", "warning") for p in dry.problems)
    with default_provider().open(str(path)) as storage:
        bat = next(r for r in vh.regions_in_use(storage, str(path)) if r.guid == vh.BAT_GUID)
    ours = {p.offset for p in dry.problems}
    for entry in qemu_entries(qemu_before.stderr):
        assert bat.offset + 8 * entry in ours, (qemu_before.stderr, dry.problems)
    fixed = repair(path)
    assert fixed.repaired and fixed.clean, fixed.problems
    assert [p.what for p in fixed.fixed] == [p.what for p in dry.problems if p.fix]
    result = qemu.check(path, "vhdx")
    assert result.returncode == 0, result.stdout + result.stderr
    assert engine_read(path) == model
    (tmp_path / "model.raw").write_bytes(model)
    assert qemu.compare(path, "vhdx", tmp_path / "model.raw", "raw")
    assert h.regions(path, 0) == h.regions(path, 1)
    assert all(h.headers(path))
    return dry.problems


#: How the first finding of some kinds of damage begins.
FIRST_WORDS = {
    block_beyond_the_file: "block 2 (disk offset 2097152) points to file offset 104857600",
    block_in_the_metadata: "block 1 (disk offset 1048576) at file offset 3145728 overlaps",
    file_cut_short: "block 9 (disk offset 9437184) at file offset",
    log_left_pending: "the log holds 1 entry a crash left unapplied",
    leaked_block: "free space lies between the blocks",
}


@pytest.mark.interop
@pytest.mark.parametrize("damage, creator", [
    *((d, "qemu") for d in DAMAGE), *((d, "ours") for d in DAMAGE if d in OURS_TOO)],
    ids=lambda v: getattr(v, "__name__", v))
def test_damage_is_found_and_repaired(tmp_path, damage, creator):
    path = tmp_path / f"{creator}.vhdx"
    make(path, creator)
    assert repair(path, flags=RepairFlags.DRY_RUN).clean
    model = damage(path)
    found = check_then_repair(path, model, tmp_path, damage in QEMU_SEES)
    assert found[0].what.startswith(FIRST_WORDS.get(damage, ""))


@pytest.mark.interop
def test_our_pending_log_is_reported_and_replayed(tmp_path, pending_log_image):
    image, want = pending_log_image(tmp_path)
    dry = repair(image, flags=RepairFlags.DRY_RUN)
    assert [p.severity for p in dry.problems] == ["warning"]
    assert "replay" in dry.problems[0].fix
    assert "needs to be replayed" in qemu.check(image, "vhdx").stderr
    fixed = repair(image)
    assert fixed.clean and engine_read(image) == want
    assert qemu.check(image, "vhdx").returncode == 0


@pytest.mark.parametrize("creator", ["qemu", "ours"])
def test_clean_images_are_clean(tmp_path, creator):
    path = tmp_path / "c.vhdx"
    if creator == "qemu":
        for options in ("subformat=dynamic", "subformat=fixed,block_size=1M",
                        "block_state_zero=off"):
            qemu.qemu_img("create", "-f", "vhdx", "-o", options, path, str(SIZE))
            assert repair(path, flags=RepairFlags.DRY_RUN).clean, options
            path.unlink()
    else:
        for config in ({}, {"logical_sector_size": "4096"}, {"log_size": "2M"}):
            h.create(path, SIZE, **config)
            assert repair(path, flags=RepairFlags.DRY_RUN).clean, config
            path.unlink()
    make(path, creator)
    report = repair(path, flags=RepairFlags.DRY_RUN)
    assert report.clean and report.format == "VHDX"


# -- differencing images -------------------------------------------------------------

def make_diff(tmp_path: Path) -> tuple[Path, bytes]:
    base, diff = tmp_path / "base.vhdx", tmp_path / "diff.vhdx"
    make(base, "ours")
    with open_chain(base) as disk:
        disk.create_diff(diff, "VHDX", config={"block_size": "1M"})
        disk.write(MiB + 512, b"\x41" * 1024)      # block 1: own data in two sectors
        disk.write(4 * MiB, b"\x42" * MiB)         # block 4
    return diff, expected(SIZE, [*WRITES, (MiB + 512, 1024, 0x41), (4 * MiB, MiB, 0x42)])


def test_a_missing_sector_bitmap_is_rebuilt(tmp_path):
    """Block 1 was written whole by us (the base's data around the two sectors), so a
    rebuilt bitmap keeps every non-zero sector: the content stays the same."""
    diff, model = make_diff(tmp_path)
    h.set_bat(diff, 1, block_at(diff, 1) | vb.PARTIALLY_PRESENT)
    with pytest.raises(errors.Corrupted, match="sector bitmap"):
        engine_read(diff)
    dry = repair(diff, flags=RepairFlags.DRY_RUN)
    assert len(dry.problems) == 1 and "sector bitmap" in dry.problems[0].what
    assert repair(diff).clean
    assert h.bat(diff, 4097)[4096] & 7 == vb.SB_PRESENT
    assert engine_read(diff) == model


def test_sector_bitmap_entries_that_cannot_be(tmp_path):
    diff, model = make_diff(tmp_path)
    h.set_bat(diff, 4096, 3)  # a state sector bitmap entries do not have
    dry = repair(diff, flags=RepairFlags.DRY_RUN)
    assert "undefined state 3" in dry.problems[0].what
    assert repair(diff).clean and h.bat(diff, 4097)[4096] == 0
    h.set_bat(diff, 4096, (300 * MiB) | vb.SB_PRESENT)  # beyond the file: cleared
    dry = repair(diff, flags=RepairFlags.DRY_RUN)
    assert "beyond the end" in dry.problems[0].what
    assert repair(diff).clean and engine_read(diff) == model


# -- what cannot be repaired, and hostile files ------------------------------------------

@pytest.mark.parametrize("damage, what", [
    (lambda p: poke(p, 0, b"vhdyfile"), "signature"),
    (lambda p: [corrupt(p, off + 8) for off in vh.HEADER_OFFSETS], "neither VHDX header"),
    (lambda p: [corrupt(p, off + 8) for off in vh.REGION_OFFSETS], "both region tables"),
    (lambda p: corrupt(p, h.regions(p)["metadata"].offset), "metadata"),
])
def test_what_cannot_be_repaired_is_left_alone(tmp_path, damage, what):
    path = tmp_path / "x.vhdx"
    make(path, "ours")
    damage(path)
    before = digest(path)
    findings = VhdxImage.check(default_provider(), str(path), True)
    assert findings and what in findings[0].what and findings[0].fix is None
    assert digest(path) == before


@pytest.mark.parametrize("creator", ["qemu", "ours"])
def test_random_damage_is_reported_and_what_can_be_fixed_is(tmp_path, creator):
    """The check raises nothing and writes nothing; where every finding has a fix,
    the repair leaves an image that checks clean and reads."""
    pristine = tmp_path / "pristine.vhdx"
    make(pristine, creator)
    rng = random.Random(7)
    io = default_provider()
    hot = [vh.HEADER_OFFSETS[0], vh.HEADER_OFFSETS[1], vh.REGION_OFFSETS[0],
           vh.REGION_OFFSETS[1], MiB, 2 * MiB, 3 * MiB]
    for round_ in range(15):
        path = tmp_path / f"r{round_}.vhdx"
        shutil.copyfile(pristine, path)
        raw = bytearray(path.read_bytes())
        for _ in range(rng.randint(1, 12)):
            at = rng.choice([rng.randrange(len(raw)), rng.choice(hot) + rng.randrange(96)])
            raw[at] = rng.randrange(256)
        if rng.random() < 0.3:
            del raw[rng.randrange(len(raw)):]
        path.write_bytes(bytes(raw))
        before = digest(path)
        findings = VhdxImage.check(io, str(path), False)
        assert digest(path) == before
        if findings and all(f.fix for f in findings):
            VhdxImage.check(io, str(path), True)
            assert VhdxImage.check(io, str(path), False) == []
            engine_read(path)
        path.unlink()


def test_an_interrupted_operation_is_completed(tmp_path):
    """A complete journal a crash left beside the image is reported, then applied."""
    path = tmp_path / "j.vhdx"
    make(path, "ours")
    record = journal.Record(journal.WRITE, block_at(path, 0), b"\x77" * 512)
    Path(journal.journal_path(str(path))).write_bytes(journal.encode([record]))
    dry = repair(path, flags=RepairFlags.DRY_RUN)
    assert [p.what for p in dry.problems] == \
        ["an operation was interrupted; its journal is still pending"]
    assert repair(path).clean
    assert not os.path.exists(journal.journal_path(str(path)))
    assert engine_read(path)[:1024] == b"\x77" * 512 + b"\x31" * 512
