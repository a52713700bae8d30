"""DMG on damaged and hostile input: always a VDError naming the problem.

Never another exception, a hang, a huge allocation or a write.
"""

from __future__ import annotations

import bz2
import lzma
import os
import random
import struct
import tracemalloc
import zlib

import pytest

from tests.formats.dmg import builder as b
from vdgui.engine import Disk, DiskType, OpenFlags, probe
from vdgui.engine import errors

S = b.SECTOR


def open_dmg(path) -> Disk:
    disk = Disk(DiskType.DVD)
    try:
        disk.open(path, "DMG", OpenFlags.READONLY)
    except BaseException:
        disk.close_all()
        raise
    return disk


def simple(path, **kwargs) -> bytes:
    return b.build(path, [[b.Piece(b.RAW, b.noise(2, 1)), b.Piece(b.ZLIB, b.text(4, 2)),
                           b.zeros(2)],
                          [b.Piece(b.BZIP2, b.text(2, 3))]], **kwargs)


# -- the trailer -------------------------------------------------------------------------

def test_files_without_a_trailer_are_not_dmg(tmp_path, unchanged):
    short = unchanged(_write(tmp_path / "short.dmg", b"koly" + bytes(100)))
    with pytest.raises(errors.NotSupported, match="not a disk image"):
        probe(str(short))
    with pytest.raises(errors.InvalidHeader, match="shorter than a UDIF trailer"):
        open_dmg(short)
    cut = tmp_path / "cut.dmg"
    simple(cut)
    cut.write_bytes(cut.read_bytes()[:-100])
    unchanged(cut)
    with pytest.raises(errors.InvalidHeader, match="no 'koly'"):
        open_dmg(cut)


@pytest.mark.parametrize("fields, error, words", [
    (dict(version=5), errors.NotSupported, "version 5"),
    (dict(header_size=1024), errors.NotSupported, "1024 bytes"),
    (dict(segment_count=3, segment_number=2), errors.NotSupported, "segment 2 of 3"),
    (dict(sector_count=0), errors.Corrupted, "disk size"),
    (dict(sector_count=2 ** 64 - 1), errors.Corrupted, "disk size"),
    (dict(xml_offset=2 ** 64 - 1), errors.Corrupted, "XML property list"),
    (dict(xml_length=2 ** 63), errors.Corrupted, "XML property list"),
    (dict(data_fork_offset=2 ** 62), errors.Corrupted, "data fork"),
    (dict(rsrc_offset=10, rsrc_length=10 ** 9), errors.Corrupted, "resource fork"),
    (dict(xml_length=0), errors.Corrupted, "neither a property list nor a resource fork"),
])
def test_bad_trailer_fields(tmp_path, unchanged, fields, error, words):
    path = tmp_path / "bad.dmg"
    simple(path, koly_fields=fields)
    unchanged(path)
    # Recognised by its trailer, so probing claims it and opening says why.
    assert probe(str(path))[0] == "DMG"
    with pytest.raises(error, match=words) as caught:
        open_dmg(path)
    assert str(path) in str(caught.value)


def test_absurd_property_list_length_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.dmg"
    with open(path, "wb") as f:  # sparse: 40 MiB of hole, then a trailer
        f.truncate(40 << 20)
        f.seek(40 << 20)
        f.write(b.koly(xml_offset=0, xml_length=(40 << 20), sector_count=8))
    tracemalloc.start()
    try:
        with pytest.raises(errors.NotSupported, match="MiB this program reads"):
            open_dmg(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# -- the property list -----------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE plist [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
]>
<plist version="1.0"><dict><key>resource-fork</key><dict><key>blkx</key><array>
<dict><key>Name</key><string>&f;</string><key>Data</key><data></data></dict>
</array></dict></dict></plist>
"""


@pytest.mark.parametrize("plist, words", [
    (BILLION_LAUGHS, "entities"),
    (BILLION_LAUGHS.decode().encode("utf-16"), "ASCII-compatible"),
    (b"<?xml version='1.0'?><plist><dict><key>a</key>", "not a valid XML property list"),
    (b"\x89PNG not xml at all", "not a valid XML property list"),
    (b"bplist00" + bytes(40), "ASCII-compatible"),
    (b"bplist00" + b"x" * 40, "not a valid XML property list"),
    (b"<plist><array/></plist>", "'resource-fork'"),
    (b"<plist><dict><key>resource-fork</key><dict/></dict></plist>", "'blkx'"),
    (b"<plist><dict><key>resource-fork</key><dict><key>blkx</key><array><string>x</string>"
     b"</array></dict></dict></plist>", "not a dictionary"),
    (b"<plist><dict><key>resource-fork</key><dict><key>blkx</key><array><dict><key>Data"
     b"</key><string>x</string></dict></array></dict></dict></plist>", "'Data'"),
    (b"<plist><dict><key>resource-fork</key><dict><key>blkx</key><array><dict><key>Data"
     b"</key><data>!!!not base64 at all!!!</data></dict></array></dict></dict></plist>",
     "not a valid XML property list"),
    (b"<plist><dict><key>resource-fork</key><dict><key>blkx</key><array><dict><key>Data"
     b"</key><data>bWFzaA==</data></dict></array></dict></dict></plist>",
     "not a mish block table"),
    (b"<plist><dict><key>resource-fork</key><dict><key>blkx</key><array><dict><key>Data"
     b"</key><data>AAAA</data><key>x</key><integer>" + b"9" * 5000 + b"</integer></dict>"
     b"</array></dict></dict></plist>", "not a valid XML property list"),
])
def test_bad_property_lists(tmp_path, unchanged, plist, words):
    path = tmp_path / "plist.dmg"
    simple(path, tamper_plist=lambda _: plist)
    unchanged(path)
    with pytest.raises(errors.Corrupted, match=words):
        open_dmg(path)


def test_no_block_tables_at_all(tmp_path):
    path = tmp_path / "none.dmg"
    simple(path, tamper_plist=lambda _: b"<plist><dict><key>resource-fork</key><dict><key>"
                                        b"blkx</key><array/></dict></dict></plist>")
    with pytest.raises(errors.Corrupted, match="no block tables"):
        open_dmg(path)


def test_bad_resource_forks(tmp_path):
    path = tmp_path / "rsrc.dmg"
    simple(path, metadata="rsrc")
    data = bytearray(path.read_bytes())
    rsrc_offset = struct.unpack_from(">Q", data, len(data) - 512 + 0x28)[0]
    for field, value, words in ((8, 10 ** 6, "does not lie within"),
                                (256, 10 ** 6, "runs past the end")):
        damaged = bytearray(data)
        struct.pack_into(">I", damaged, rsrc_offset + field, value)
        path.write_bytes(damaged)
        with pytest.raises(errors.Corrupted, match=words):
            open_dmg(path)


# -- block tables and chunk entries ----------------------------------------------------

def _entries(index: int, change):
    """A tamper_entries hook changing entry ``index`` (1 = first chunk) of table 0."""
    def hook(partition, rows):
        if partition == 0:
            change(rows[index])
    return hook


def _set(**values):
    columns = dict(kind=0, comment=1, first=2, count=3, offset=4, length=5)

    def change(row):
        for name, value in values.items():
            row[columns[name]] = value
    return change


@pytest.mark.parametrize("change, words", [
    (_set(first=1), "overlap"),
    (_set(count=2 ** 63), "impossible count"),
    (_set(first=2 ** 61), "impossible first"),
    (_set(offset=10 ** 9), "beyond the end of the file"),
    (_set(length=2 ** 62 - 1), "impossible length"),
    (_set(length=3 * S), "more bytes than its sectors"),
    (_set(length=S), "fewer bytes than its sectors"),
    (_set(count=0), "for 0 sectors"),
])
def test_bad_raw_chunk_entries(tmp_path, unchanged, change, words):
    path = tmp_path / "entry.dmg"
    simple(path, tamper_entries=_entries(1, change))
    unchanged(path)
    with pytest.raises(errors.Corrupted, match=words):
        open_dmg(path)


@pytest.mark.parametrize("change, words", [
    (_set(count=200_000), "larger than the 64 MiB"),
    (_set(length=0), "impossible compressed length"),
    (_set(offset=0), "overlaps the payload of another chunk"),
    (_set(first=10), "beyond the 10 sectors"),
])
def test_bad_compressed_chunk_entries(tmp_path, change, words):
    path = tmp_path / "entry.dmg"
    simple(path, tamper_entries=_entries(2, change))
    with pytest.raises(errors.Corrupted, match=words):
        open_dmg(path)


def test_bad_block_tables(tmp_path):
    path = tmp_path / "mish.dmg"

    def table(change):
        def hook(tables):
            tables[1] = change(tables[1])
        return hook

    cases = [
        (lambda t: b"MISH" + t[4:], errors.Corrupted, "not a mish block table"),
        (lambda t: t[:4] + struct.pack(">I", 2) + t[8:], errors.NotSupported, "version 2"),
        (lambda t: t[:200] + struct.pack(">I", 10 ** 6) + t[204:], errors.Corrupted,
         "claims 1000000 chunks"),
        (lambda t: t[:8] + struct.pack(">Q", 2 ** 63) + t[16:], errors.Corrupted,
         "impossible first sector"),
        (lambda t: t[:100], errors.Corrupted, "cut short"),
    ]
    for change, error, words in cases:
        simple(path, tamper_tables=table(change))
        with pytest.raises(error, match=words):
            open_dmg(path)


# -- payloads that do not decode to their size ------------------------------------------

@pytest.mark.parametrize("kind, encode", [
    (b.ZLIB, zlib.compress), (b.BZIP2, bz2.compress), (b.LZMA, lzma.compress),
    (b.ADC, b.adc_encode)], ids=["zlib", "bzip2", "lzma", "adc"])
def test_payload_longer_or_shorter_than_declared(tmp_path, kind, encode):
    path = tmp_path / "size.dmg"
    content = b.text(2, 5)
    for payload, words in ((encode(content + content), "more than the 1024 bytes"),
                           (encode(content[:S]), "decodes to 512 bytes instead of the 1024"),
                           (b"\x00garbage" * 8, "damaged")):
        b.build(path, [[b.Piece(kind, content, payload=payload)]])
        with open_dmg(path) as disk, pytest.raises(errors.Corrupted, match=words):
            disk.read(0, disk.size)


@pytest.mark.parametrize("kind, bomb", [
    (b.ZLIB, lambda: zlib.compress(bytes(32 << 20), 9)),
    (b.BZIP2, lambda: bz2.compress(bytes(32 << 20))),
    (b.LZMA, lambda: lzma.compress(bytes(32 << 20), preset=0)),
    (b.ADC, lambda: bytes([0x80, 0]) + bytes([0x7F, 0, 0]) * 500_000),
], ids=["zlib", "bzip2", "lzma", "adc"])
def test_decompression_bombs_never_allocate_more_than_the_chunk(tmp_path, kind, bomb):
    path = tmp_path / "bomb.dmg"
    b.build(path, [[b.Piece(b.RAW, b.noise(1, 1)), b.Piece(kind, bytes(2 * S), payload=bomb())]])
    with open_dmg(path) as disk:
        tracemalloc.start()
        try:
            with pytest.raises(errors.Corrupted, match="more than the 1024 bytes"):
                disk.read(S, 2 * S)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 4 << 20


def test_file_shrinking_under_an_open_image(tmp_path):
    path = tmp_path / "shrink.dmg"
    simple(path)
    with open_dmg(path) as disk:
        os.truncate(path, 100)
        with pytest.raises(errors.Corrupted, match="beyond the end of the file|truncated"):
            disk.read(0, S)
        with pytest.raises(errors.Corrupted, match="truncated"):
            disk.read(2 * S, S)


# -- random damage ---------------------------------------------------------------------

def test_random_damage_raises_only_vd_errors(tmp_path):
    """Flip bytes anywhere (mostly in the metadata) or cut the file; open and read all."""
    source = tmp_path / "good.dmg"
    b.build(source, b.every_kind(), metadata="both")
    good = source.read_bytes()
    metadata_start = good.index(b"<?xml")
    rng = random.Random(1234)
    path = tmp_path / "damaged.dmg"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        data = bytearray(good)
        if rng.random() < 0.1:
            data = data[:rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(metadata_start if rng.random() < 0.8 else 0, len(data))
                data[at] = rng.randrange(256)
        path.write_bytes(data)
        try:
            with open_dmg(path) as disk:
                image = disk.image(0)
                image.describe()
                end = min(disk.size, 1 << 20)
                pos = 0
                while pos < end:
                    status, run = image.block_status(pos, end - pos)
                    disk.read(pos, min(run, 1 << 20))
                    pos += run
            outcomes["ok"] += 1
        except errors.VDError:
            outcomes["error"] += 1
    assert outcomes["ok"] and outcomes["error"]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
