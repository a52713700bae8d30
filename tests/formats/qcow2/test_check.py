"""Check and repair of damaged QCOW2 images, made by qemu and by us: we find at least
what ``qemu-img check`` finds, a dry run changes nothing, and a repaired image
passes ``qemu-img check`` and reads as expected."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
import tracemalloc
from dataclasses import dataclass
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import qemu
from tests.formats.qcow2.layout import COPIED, OFFSET_MASK, Layout, assert_covers, qemu_problems
from tests.formats.qcow2.util import (MiB, assert_clean, assert_same_as_raw, create, qemu_create,
                                      read_all)
from tests.robustness.seeds import all_seeds
from tests.robustness.test_mutations import apply, mutation
from vdgui.engine.chain import open_chain
from vdgui.engine.container import Disk
from vdgui.engine.errors import VDError
from vdgui.engine.findings import Finding
from vdgui.engine.formats.qcow2 import Qcow2Image
from vdgui.engine.io import (Fault, FaultyProvider, FileProvider, MemoryProvider,
                             default_provider)
from vdgui.engine.io.faulty import SimulatedCrash
from vdgui.engine.ops.repair import repair
from vdgui.engine.types import OpenFlags, RepairFlags

pytestmark = pytest.mark.interop

KiB = 1024
CS = 4096
SIZE = 8 * MiB
#: Guest offsets of the test images' content.
A, B, ZERO, C = 0, MiB, 2 * MiB, 5 * MiB
WRITES = [(A, 0x11, 64 * KiB), (B, 0x22, 8 * KiB), (C, 0x33, 12 * KiB)]


def _ours(tmp_path) -> os.PathLike:
    path = create(tmp_path / "ours.qcow2", SIZE, cluster_size=str(CS))
    with Disk() as disk:
        disk.open(str(path))
        for offset, byte, length in WRITES:
            disk.write(offset, bytes([byte]) * length)
        disk.write(ZERO, bytes(CS))
    return path


def _qemu(tmp_path) -> os.PathLike:
    writes = [f"write -P {byte:#x} {offset} {length}" for offset, byte, length in WRITES]
    return qemu_create(tmp_path / "qemu.qcow2", SIZE, *writes, f"write -z {ZERO} {CS}",
                       options=f"cluster_size={CS}")


MAKERS = {"ours": _ours, "qemu": _qemu}


@dataclass
class Damage:
    name: str
    apply: Callable[[Layout], None]
    #: Guest ranges that read as zeros once repaired (the data there was lost).
    zeroed: tuple[tuple[int, int], ...] = ()
    #: qemu-img check -r all repairs it too (and reads the result as we do).
    qemu_fixes: bool = True

    def __str__(self) -> str:
        return self.name


def _grow_and_count(layout: Layout) -> None:
    """Add a cluster at the end of the file that is counted but used by nothing."""
    cluster = layout.clusters
    with open(layout.path, "r+b") as f:
        f.truncate((cluster + 1) * layout.cs)
    layout.set_refcount(cluster, 1)


def _flag(layout: Layout, word: int, bits: int) -> None:
    layout.put_u64(word, layout.u64(word) ^ bits)


def _incompatible(bits: int) -> Callable[[Layout], None]:
    def apply(layout: Layout) -> None:
        _flag(layout, 72, bits)
        if bits & 1:  # dirty: as after a crash with lazy refcounts, a count is missing
            layout.set_refcount(layout.host_cluster(C), 0)
    return apply


DAMAGES = [
    Damage("refcount too low", lambda L: L.set_refcount(L.host_cluster(A), 0)),
    Damage("refcount too high", lambda L: L.set_refcount(L.host_cluster(B), 3)),
    Damage("leaked cluster", _grow_and_count),
    Damage("count beyond the end", lambda L: L.set_refcount(L.clusters + 5, 1)),
    Damage("L2 entry past the end",
           lambda L: L.put_u64(L.l2_word(C), (L.clusters + 100) * L.cs | COPIED),
           zeroed=((C, CS),), qemu_fixes=False),
    Damage("L2 entry into the L1 table",
           lambda L: L.put_u64(L.l2_word(C + CS), L.l1_offset | COPIED),
           zeroed=((C + CS, CS),), qemu_fixes=False),
    Damage("L2 entry unaligned",
           lambda L: L.put_u64(L.l2_word(C), L.u64(L.l2_word(C)) + 512),
           zeroed=((C, CS),), qemu_fixes=False),
    Damage("COPIED cleared", lambda L: _flag(L, L.l2_word(B), COPIED)),
    Damage("COPIED cleared in L1", lambda L: _flag(L, L.l1_word(C), COPIED)),
    Damage("reserved bits", lambda L: _flag(L, L.l2_word(B), 1 << 56 | 2), qemu_fixes=False),
    Damage("L1 entry past the end",
           lambda L: L.put_u64(L.l1_word(C), (L.clusters + 50) * L.cs | COPIED),
           zeroed=((4 * MiB, 2 * MiB),), qemu_fixes=False),
    Damage("refcount block unaligned",
           lambda L: L.put_u64(L.reftable, L.u64(L.reftable) + 512), qemu_fixes=False),
    Damage("refcount block outside the file",
           lambda L: L.put_u64(L.reftable, (L.clusters + 7) * L.cs)),
    Damage("dirty", _incompatible(1)),
    Damage("corrupt bit", _incompatible(2)),
]


def _expected(before: bytes, damage: Damage) -> bytes:
    data = bytearray(before)
    for offset, length in damage.zeroed:
        data[offset:offset + length] = bytes(length)
    return bytes(data)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", DAMAGES, ids=str)
@pytest.mark.parametrize("maker", MAKERS)
def test_damage_found_and_repaired(tmp_path, maker, damage):
    path = MAKERS[maker](tmp_path)
    layout = Layout.read(path)
    before = read_all(path)
    damage.apply(layout)
    damaged = _digest(path)
    findings = Qcow2Image.check(default_provider(), str(path), False)
    assert _digest(path) == damaged, "a check wrote"
    assert findings and all(f.fix for f in findings), findings
    assert_covers(path, findings, CS)
    if damage.qemu_fixes:
        theirs = tmp_path / "qemu-repaired.qcow2"
        shutil.copy(path, theirs)
        qemu.qemu_img("check", "-q", "-r", "all", theirs, check=False)
        assert_clean(theirs)
    report = repair(path, flags=RepairFlags.DRY_RUN)
    assert not report.clean and _digest(path) == damaged
    report = repair(path)
    assert report.repaired and report.clean, report.problems
    assert_clean(path)
    expected = _expected(before, damage)
    assert read_all(path) == expected
    assert_same_as_raw(path, expected, tmp_path)
    if damage.qemu_fixes:
        assert qemu.compare(path, "qcow2", theirs, "qcow2")


def test_cluster_used_twice_gets_its_own_copy(tmp_path):
    path = _qemu(tmp_path)
    layout = Layout.read(path)
    layout.put_u64(layout.l2_word(C + CS), layout.u64(layout.l2_word(B)))
    shown = read_all(path)  # the second entry shows the first one's data
    assert shown[C + CS:C + 2 * CS] == b"\x22" * CS
    findings = Qcow2Image.check(default_provider(), str(path), False)
    assert any("another active entry uses" in f.what for f in findings)
    assert_covers(path, findings, CS)
    assert repair(path).clean
    assert_clean(path)
    assert read_all(path) == shown
    assert layout.host_cluster(C + CS) != layout.host_cluster(B)
    with Disk() as disk:  # writing one no longer changes the other
        disk.open(str(path))
        disk.write(B, b"\x99" * CS)
        assert disk.read(C + CS, CS) == b"\x22" * CS
    assert_clean(path)


def test_l2_table_used_twice(tmp_path):
    path = _ours(tmp_path)
    layout = Layout.read(path)
    layout.put_u64(layout.l1_word(2 * MiB), layout.u64(layout.l1_word(A)))
    shown = read_all(path)
    assert shown[2 * MiB:2 * MiB + 64 * KiB] == b"\x11" * (64 * KiB)
    findings = Qcow2Image.check(default_provider(), str(path), False)
    assert_covers(path, findings, CS)
    assert repair(path).clean
    assert_clean(path)
    assert read_all(path) == shown


def test_compressed_cluster_damage(tmp_path):
    path = qemu_create(tmp_path / "c.qcow2", SIZE, f"write -c -P 0x44 0 {CS}",
                       f"write -c -P 0x55 {CS} {CS}", options=f"cluster_size={CS}")
    layout = Layout.read(path)
    _flag(layout, layout.l2_word(0), COPIED)
    entry = layout.u64(layout.l2_word(CS))
    layout.put_u64(layout.l2_word(CS), entry & ~((1 << 54) - 1) | (layout.clusters + 9) * CS)
    findings = Qcow2Image.check(default_provider(), str(path), False)
    assert any("compressed" in f.what and "COPIED" in f.what for f in findings)
    assert any("beyond the end" in f.what for f in findings)
    assert_covers(path, findings, CS)
    assert repair(path).clean
    assert_clean(path)
    assert read_all(path)[:2 * CS] == b"\x44" * CS + bytes(CS)


def test_snapshots_checked_and_kept(tmp_path):
    path = _qemu(tmp_path)
    qemu.qemu_img("snapshot", "-c", "s1", path)
    qemu.qemu_io(path, "qcow2", f"write -P 0x66 {B} {CS}")
    assert Qcow2Image.check(default_provider(), str(path), False) == []
    layout = Layout.read(path)
    _flag(layout, layout.l2_word(A), COPIED)  # shared with the snapshot: refcount 2
    findings = Qcow2Image.check(default_provider(), str(path), False)
    assert any("COPIED flag is set" in f.what for f in findings)
    assert_covers(path, findings, CS)
    snapshot = tmp_path / "s1.raw"
    qemu.qemu_img("convert", "-l", "s1", "-O", "raw", path, tmp_path / "before.raw")
    assert repair(path).clean
    assert_clean(path)
    qemu.qemu_img("convert", "-l", "s1", "-O", "raw", path, snapshot)
    assert snapshot.read_bytes() == (tmp_path / "before.raw").read_bytes()


@pytest.mark.parametrize("options", ["", "compat=0.10", "cluster_size=512",
                                     "refcount_bits=1", "refcount_bits=64",
                                     "extended_l2=on,cluster_size=64k"])
def test_clean_qemu_images(tmp_path, options):
    path = qemu_create(tmp_path / "q.qcow2", 16 * MiB, "write -P 1 0 100k",
                       "write -c -P 2 1M 64k", "write -z 2M 64k", "write -P 3 3M 4k",
                       options=options)
    if "refcount_bits=1" not in options:  # one-bit counts cannot share clusters
        qemu.qemu_img("snapshot", "-c", "snap", path)
    qemu.qemu_io(path, "qcow2", "write -P 4 50k 8k", "discard 3M 4k")
    assert Qcow2Image.check(default_provider(), str(path), False) == []


def test_bitmaps_are_counted(tmp_path):
    path = qemu_create(tmp_path / "b.qcow2", 16 * MiB, "write -P 1 0 1M")
    qemu.qemu_img("bitmap", "--add", path, "b0")
    qemu.qemu_io(path, "qcow2", "write -P 2 4M 1M")
    assert Qcow2Image.check(default_provider(), str(path), False) == []


def test_dry_run_of_clean_image_and_report(tmp_path):
    path = _ours(tmp_path)
    report = repair(path, flags=RepairFlags.DRY_RUN)
    assert report.clean and report.format == "QCOW2"
    layout = Layout.read(path)
    _grow_and_count(layout)
    report = repair(path, flags=RepairFlags.DRY_RUN)
    assert [p.severity for p in report.problems] == ["leak"]
    assert report.leaked_bytes == CS
    size = path.stat().st_size
    fixed = repair(path)
    assert fixed.clean and fixed.fixed and path.stat().st_size == size - CS


def test_header_damage_is_reported_not_repaired(tmp_path):
    path = _ours(tmp_path)
    with open(path, "r+b") as f:
        f.seek(20)  # cluster_bits
        f.write(b"\0\0\0\x40")
    before = _digest(path)
    report = repair(path)
    assert not report.clean and not report.repaired
    assert report.problems[0].fix is None and "cluster_bits" in report.problems[0].what
    assert _digest(path) == before


def test_many_problems_are_summed_up(tmp_path):
    path = create(tmp_path / "m.qcow2", SIZE, cluster_size=str(CS))
    with Disk() as disk:
        disk.open(str(path))
        disk.write(0, b"\x42" * (400 * CS))
    layout = Layout.read(path)
    for guest in range(0, 400 * CS, CS):
        _flag(layout, layout.l2_word(guest), COPIED)
    end = layout.clusters
    with open(path, "r+b") as f:  # 250 clusters at the end, counted but unused
        f.truncate((end + 250) * CS)
    for cluster in range(end, end + 250):
        layout.set_refcount(cluster, 1)
    report = repair(path, flags=RepairFlags.DRY_RUN)
    whats = [f.what for f in report.problems]
    assert len(whats) < 250
    assert any(w.startswith("300 more COPIED flags") for w in whats)
    assert any(w.startswith("150 more leaked clusters") for w in whats)
    assert report.leaked_bytes == 250 * CS
    assert repair(path).clean
    assert_clean(path)
    assert path.stat().st_size == end * CS


@pytest.mark.parametrize("seed", range(12))
def test_random_metadata_damage(tmp_path, seed):
    """Bytes flipped in the metadata clusters: the check finds problems or none, never
    fails otherwise; a repair either reports what it could not fix or leaves an
    image qemu-img check finds clean."""
    rnd = random.Random(seed)
    path = (_qemu if seed % 2 else _ours)(tmp_path)
    if seed % 3 == 0:
        qemu.qemu_img("snapshot", "-c", "s", path)
    layout = Layout.read(path)
    metadata = [0, layout.reftable, layout.l1_offset,
                layout.u64(layout.reftable) & ~0x1FF,
                layout.u64(layout.l1_word(0)) & OFFSET_MASK]
    with open(path, "r+b") as f:
        for _ in range(rnd.randrange(1, 6)):
            offset = rnd.choice(metadata) + rnd.randrange(0, 128) * 8
            if offset < 112:
                continue  # header fields: covered by the hostile-input tests
            f.seek(offset)
            f.write(bytes([rnd.randrange(256)]))
    before = _digest(path)
    findings = Qcow2Image.check(default_provider(), str(path), False)
    assert _digest(path) == before
    try:
        report = repair(path)
    except VDError:
        return
    if report.clean and qemu_problems(path) == []:
        result = qemu.check(path, "qcow2")
        assert result.returncode == 0, (findings, result.stdout + result.stderr)
    if report.clean:
        assert_clean(path)


HOSTILE_EXAMPLES = int(os.environ.get("VDGUI_FUZZ_EXAMPLES", "12")) * 2


@pytest.mark.parametrize("seed", ["qcow2", "qemu-qcow2"])
@settings(max_examples=HOSTILE_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_files_give_findings_only(seed, data):
    """A check of a mutated file returns findings (never another exception), writes
    nothing and stays within bounds; a repair fails with a VDError at worst, and what
    it calls clean opens and reads."""
    seeds = all_seeds()
    if seed not in seeds:
        pytest.skip("no qemu")
    files, top = seeds[seed]
    mutated = apply(files[top], data.draw(st.lists(mutation(len(files[top])), min_size=1,
                                                   max_size=4)))
    io = MemoryProvider()
    io.put(top, mutated)
    tracemalloc.start()
    start = time.monotonic()
    try:
        findings = Qcow2Image.check(io, top, False)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - start < 10 and peak < 96 << 20
    assert io.get(top) == mutated and set(io.files) == {top}
    assert all(isinstance(f, Finding) for f in findings)
    try:
        repaired = Qcow2Image.check(io, top, True)
    except VDError:
        return
    assert [f.what for f in repaired] == [f.what for f in findings]
    if not any(f.fix is None for f in findings):
        assert Qcow2Image.check(io, top, False) == []
        with open_chain(top, OpenFlags.READONLY, io=io) as disk:
            disk.read(0, min(disk.size, 4 << 20))


def test_extended_l2_image_repaired(tmp_path):
    """Images with subclusters are only read, but their refcounts and flags can be
    repaired like any other's."""
    path = qemu_create(tmp_path / "x.qcow2", SIZE, "write -P 5 0 256k", "write -P 6 1M 4k",
                       options="extended_l2=on,cluster_size=65536")
    layout = Layout.read(path)
    table = layout.u64(layout.l1_word(0)) & OFFSET_MASK
    data = layout.u64(table + 16 * (MiB // 65536)) & OFFSET_MASK
    layout.set_refcount(data // 65536, 0)
    layout.put_u64(table + 16, layout.u64(table + 16) ^ COPIED)
    _grow_and_count(layout)
    expected = read_all(path)
    findings = Qcow2Image.check(default_provider(), str(path), False)
    assert_covers(path, findings, 65536)
    assert repair(path).clean
    assert_clean(path)
    assert read_all(path) == expected


def test_repair_cut_short(tmp_path):
    """A repair cut short after any of its writes leaves the image as it was, or
    repaired once its journal is completed (by the next repair)."""
    template = _qemu(tmp_path)
    layout = Layout.read(template)
    before = read_all(template)
    layout.set_refcount(layout.host_cluster(A), 0)
    layout.put_u64(layout.l2_word(C), (layout.clusters + 100) * layout.cs | COPIED)
    layout.put_u64(layout.l2_word(C + CS), layout.u64(layout.l2_word(B)))  # gets a copy
    _grow_and_count(layout)
    expected = bytearray(_expected(before, Damage("", None, zeroed=((C, CS),))))
    expected[C + CS:C + 2 * CS] = before[B:B + CS]
    n = 0
    while True:
        folder = tmp_path / f"run{n}"
        folder.mkdir()
        path = folder / "img.qcow2"
        shutil.copy(template, path)
        try:
            Qcow2Image.check(FaultyProvider(FileProvider(), Fault(after_writes=n)),
                             str(path), True)
            completed = True
        except SimulatedCrash:
            completed = False
        report = repair(path)
        assert report.clean, (n, report.problems)
        assert_clean(path)
        assert read_all(path) == expected
        if completed:
            break
        shutil.rmtree(folder)
        n += 1
    assert n > 3


def test_version_2_overlay_gets_zero_filled_clusters(tmp_path):
    """Version 2 has no zero clusters: untrusted entries of an overlay get clusters
    filled with zeros, never the backing file's older data."""
    base = qemu_create(tmp_path / "base.qcow2", SIZE, f"write -P 0x99 0 {SIZE}",
                       options="compat=0.10")
    path = qemu_create(tmp_path / "top.qcow2", SIZE, f"write -P 0x11 0 {SIZE // 2}",
                       f"write -P 0x33 {C} {CS}", options=f"compat=0.10,cluster_size={CS}",
                       backing=base)
    layout = Layout.read(path)
    before = read_all(path)
    layout.put_u64(layout.l1_word(A), (layout.clusters + 50) * CS | COPIED)
    layout.put_u64(layout.l2_word(C), (layout.clusters + 100) * CS | COPIED)
    assert repair(path).clean
    assert_clean(path)
    expected = bytearray(before)
    expected[:2 * MiB] = bytes(2 * MiB)  # the range of the first L2 table
    expected[C:C + CS] = bytes(CS)
    assert read_all(path) == expected
    assert_same_as_raw(path, expected, tmp_path)
