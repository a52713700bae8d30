"""``vdimg discard``: ranges read as zeros, space is released, refusals change nothing."""

from __future__ import annotations

from pathlib import Path

from vdgui.engine import OpenFlags, open_chain

from .helpers import Runner, content, make_diff, make_image, snapshot

MIB = 1 << 20
DATA = {0: b"a" * MIB, MIB: b"b" * MIB, 2 * MIB: b"c" * MIB}


def test_discard_whole_and_partial_blocks(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data=DATA)
    expected = bytearray(content(image))
    size_before = image.stat().st_size
    offset, length = MIB - 100, MIB + 200  # the tail of block 0, block 1, block 2's head
    result = vdimg("discard", image, str(offset), str(length))
    assert result.rc == 0, result.err
    expected[offset:offset + length] = bytes(length)
    assert content(image) == bytes(expected)
    assert image.stat().st_size == size_before - MIB  # block 1 released, file packed
    assert f"discarded {length} " in result.text and f"offset {offset}" in result.text


def test_discard_in_diff_hides_parent(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi", data=DATA)
    top = make_diff(base, tmp_path / "top.vdi", data={MIB: b"t" * 10})
    parent = snapshot(base)
    assert vdimg("discard", top, "1M", "2M").rc == 0
    data = content(top)
    assert data[:MIB] == b"a" * MIB and not any(data[MIB:3 * MIB])
    assert snapshot(base) == parent


def test_suffixes(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data=DATA)
    assert vdimg("discard", image, "2M", "1M").rc == 0
    assert not any(content(image)[2 * MIB:3 * MIB])


def test_format_without_discard(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.raw", backend="RAW", data=DATA)
    before = snapshot(image)
    vdimg("discard", image, "0", "1M").assert_error(3, str(image), "cannot discard")
    assert snapshot(image) == before


def test_past_the_end(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data=DATA)
    before = snapshot(image)
    vdimg("discard", image, "3M", "2M").assert_error(2, str(image), "end")
    vdimg("discard", image, "0", "lots").assert_error(2, "LENGTH")
    assert snapshot(image) == before


def test_zero_length(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data=DATA)
    before = snapshot(image)
    result = vdimg("discard", image, "0", "0")
    assert result.rc == 0 and "nothing to discard" in result.text
    assert snapshot(image) == before


def test_image_in_use(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data=DATA)
    with open_chain(image, OpenFlags.NORMAL):
        before = snapshot(image)
        vdimg("discard", image, "0", "1M").assert_error(3, str(image), "in use")
        assert snapshot(image) == before
