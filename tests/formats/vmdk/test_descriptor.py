"""The VMDK descriptor: parsing, changing, writing back, refusing malformed text."""

from __future__ import annotations

import pytest

from vdgui.engine import Disk, ImageFlags, OpenFlags
from vdgui.engine.errors import Corrupted, InvalidParameter, NotSupported, VDError
from vdgui.engine.formats.vmdk.descriptor import (MAX_LINES, Descriptor, ExtentLine,
                                                  decode_comment, encode_comment,
                                                  looks_like_descriptor)

QEMU_STYLE = """\
# Disk DescriptorFile
version=1
CID=98b1929
parentCID=ffffffff
createType="monolithicFlat"
someVendorKey="kept"

# Extent description
RW 20480 FLAT "disk-flat.vmdk" 0
RDONLY 128 ZERO
NOACCESS 64 SPARSE "other.vmdk"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "20"
ddb.adapterType="ide"
ddb.vendor.private = "x y z"
"""


def test_parse_qemu_style() -> None:
    d = Descriptor.parse(QEMU_STYLE)
    assert d.get_hex("CID") == 0x98B1929  # qemu writes CIDs without leading zeros
    assert d.get_hex("parentCID") == 0xFFFFFFFF
    assert d.get("createType") == "monolithicFlat"
    assert d.get("ddb.adapterType") == "ide"
    assert d.get("DDB.ADAPTERTYPE") == "ide"  # keys are case-insensitive
    assert d.get_int("ddb.geometry.cylinders") == 20
    assert d.extents == [ExtentLine("RW", 20480, "FLAT", "disk-flat.vmdk", 0),
                         ExtentLine("RDONLY", 128, "ZERO"),
                         ExtentLine("NOACCESS", 64, "SPARSE", "other.vmdk")]


def test_round_trip_preserves_everything() -> None:
    assert Descriptor.parse(QEMU_STYLE).render() == QEMU_STYLE


def test_changes_touch_only_their_lines() -> None:
    d = Descriptor.parse(QEMU_STYLE)
    d.set("CID", "0badcafe")
    d.set("ddb.comment", "hello")
    d.set("parentFileNameHint", "base.vmdk")
    text = d.render()
    lines = text.splitlines()
    assert "CID=0badcafe" in lines  # stays unquoted, as qemu and VMware read it
    assert 'someVendorKey="kept"' in lines and 'ddb.vendor.private = "x y z"' in lines
    # New header keys go with the header, new DDB keys at the end of the DDB.
    assert lines.index('parentFileNameHint="base.vmdk"') < lines.index("# Extent description")
    assert lines[-1] == 'ddb.comment = "hello"'
    d.set("ddb.comment", None)
    assert "ddb.comment" not in d.render()
    again = Descriptor.parse(text)
    assert again.get("parentFileNameHint") == "base.vmdk"
    assert again.extents == Descriptor.parse(QEMU_STYLE).extents


def test_new_descriptor_layout() -> None:
    d = Descriptor.new("monolithicSparse", 0x1234, 0xFFFFFFFF,
                       [ExtentLine("RW", 2048, "SPARSE", "a.vmdk")],
                       [("ddb.virtualHWVersion", "4")], parent_hint="base.vmdk")
    text = d.render()
    assert text.startswith("# Disk DescriptorFile\nversion=1\nCID=00001234\n"
                           "parentCID=ffffffff\ncreateType=\"monolithicSparse\"\n"
                           "parentFileNameHint=\"base.vmdk\"\n")
    assert 'RW 2048 SPARSE "a.vmdk"\n' in text
    assert text.endswith('#DDB\n\nddb.virtualHWVersion = "4"\n')


@pytest.mark.parametrize("line, why", [
    ('RW abc SPARSE "x.vmdk"', "extent line"),
    ('RW 100 BOGUS "x.vmdk"', "unknown extent type"),
    ('RW 100 ZERO "x.vmdk"', "ZERO extent has no file"),
    ("RW 100 FLAT", "needs a file name"),
    ('RW 100 SPARSE "x.vmdk" 5', "only FLAT extents"),
    ('RW 0 FLAT "x.vmdk" 0', "0 sectors"),
    ("this is not a key value pair", "expected key=value"),
    ('ddb.comment = "unterminated', "closing quote"),
    ("bad key = 1", "is not a key"),
])
def test_malformed_lines_are_corrupted(line: str, why: str) -> None:
    text = QEMU_STYLE + line + "\n"
    with pytest.raises(Corrupted) as info:
        Descriptor.parse(text, "disk.vmdk")
    assert why in str(info.value)
    assert f"line {QEMU_STYLE.count(chr(10)) + 1}" in str(info.value)
    assert "disk.vmdk" in str(info.value)


def test_bad_cid_and_geometry_values() -> None:
    d = Descriptor.parse(QEMU_STYLE.replace("CID=98b1929", "CID=nothex"))
    with pytest.raises(Corrupted):
        d.get_hex("CID")
    d = Descriptor.parse(QEMU_STYLE.replace('"20"', '"many"'))
    with pytest.raises(Corrupted):
        d.get_int("ddb.geometry.cylinders")


def test_size_limits() -> None:
    with pytest.raises(NotSupported):
        Descriptor.parse(QEMU_STYLE + "# filler\n" * MAX_LINES)
    with pytest.raises(NotSupported):
        Descriptor.parse("#" * (2 << 20))
    with pytest.raises(Corrupted):
        Descriptor.parse("# Disk DescriptorFile\nversion=1\n")  # no type, no extents


def test_probe_heuristic() -> None:
    assert looks_like_descriptor(b"# Disk DescriptorFile\nversion=1\n")
    assert looks_like_descriptor(b"\n# a comment\nversion=1\nCID=1\n")
    assert not looks_like_descriptor(b"<<< Oracle VM VirtualBox Disk Image >>>\n")
    assert not looks_like_descriptor(b"hello\n")
    assert not looks_like_descriptor(bytes(512))


def test_comment_escaping() -> None:
    text = 'two\nlines with a \\ backslash and "quotes"'
    assert "\n" not in encode_comment(text)
    assert decode_comment(encode_comment(text)) == text


def test_unknown_keys_survive_rewrites(tmp_path) -> None:
    """A metadata change through the engine keeps keys it does not know."""
    (tmp_path / "disk-flat.vmdk").write_bytes(bytes(20480 * 512))
    text = QEMU_STYLE.replace("RDONLY 128 ZERO\nNOACCESS 64 SPARSE \"other.vmdk\"\n", "")
    (tmp_path / "disk.vmdk").write_text(text)
    with Disk() as disk:
        disk.open(tmp_path / "disk.vmdk")
        disk[0].comment = "a new\ncomment"
        disk.write(0, b"\1" * 512)
    written = (tmp_path / "disk.vmdk").read_text()
    assert 'someVendorKey="kept"' in written
    assert 'ddb.vendor.private = "x y z"' in written
    assert 'ddb.comment = "a new\\ncomment"' in written
    assert "CID=98b1929" not in written  # the first write changed the CID
    with Disk() as disk:
        disk.open(tmp_path / "disk.vmdk", flags=OpenFlags.READONLY)
        assert disk[0].comment == "a new\ncomment"


def test_embedded_descriptor_has_a_fixed_size(tmp_path) -> None:
    path = tmp_path / "d.vmdk"
    with Disk() as disk:
        disk.create_base(path, 1 << 20, "VMDK")
        before = path.read_bytes()
        with pytest.raises(InvalidParameter) as info:
            disk[0].comment = "x" * 20000
        assert "holds 10240" in str(info.value)
        assert path.read_bytes() == before  # nothing written, nothing changed
        assert disk[0].comment == ""
        disk[0].comment = "fits"
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk[0].comment == "fits"


def test_a_long_comment_at_creation_gets_room(tmp_path) -> None:
    path = tmp_path / "d.vmdk"
    with Disk() as disk:
        disk.create_base(path, 1 << 20, "VMDK", comment="c" * 15000)
    with Disk() as disk:
        disk.open(path, flags=OpenFlags.READONLY)
        assert disk[0].comment == "c" * 15000


def test_malformed_descriptor_file_gives_vderror(tmp_path) -> None:
    path = tmp_path / "bad.vmdk"
    path.write_text("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n"
                    "RW 20 FLAT \"x\" 0\n!!!\n")
    with Disk() as disk, pytest.raises(VDError) as info:
        disk.open(path)
    assert "line 5" in str(info.value)
    with Disk() as disk, pytest.raises(VDError):
        disk.create_base(tmp_path / "x.vmdk", 1 << 20, "VMDK",
                         image_flags=ImageFlags.VMDK_ESX)  # ESX needs fixed
