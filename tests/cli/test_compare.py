"""``vdimg compare``: identical, different, different sizes, zero skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdgui.engine import Disk

from .helpers import Runner, make_diff, make_image

DATA = {0: b"\x11" * 4096, (3 << 20) + 17: b"tail data"}


def test_identical_across_formats_and_chains(vdimg: Runner, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.vdi", data=DATA)
    b = make_image(tmp_path / "b.raw", backend="RAW", data=DATA)
    base = make_image(tmp_path / "base.vdi", data={0: DATA[0]})
    c = make_diff(base, tmp_path / "c.vdi", data={(3 << 20) + 17: b"tail data"})
    for x, y in ((a, b), (b, a), (a, c), (c, b)):
        result = vdimg("compare", x, y)
        assert result.rc == 0, result.err
        assert "identical" in result.text


def test_different_reports_first_offset(vdimg: Runner, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.vdi", data=DATA)
    b = make_image(tmp_path / "b.vdi", data={**DATA, 2 << 20: b"\x00\x00\x01"})
    result = vdimg("compare", a, b)
    assert result.rc == 1 and result.err == ""
    assert f"offset {(2 << 20) + 2} " in result.text


def test_difference_against_unallocated(vdimg: Runner, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.vdi")
    b = make_image(tmp_path / "b.vdi", data={(1 << 20) + 5: b"x"})
    for x, y in ((a, b), (b, a)):
        result = vdimg("compare", x, y)
        assert result.rc == 1 and f"offset {(1 << 20) + 5} " in result.text


def test_size_difference_with_zero_tail(vdimg: Runner, tmp_path: Path) -> None:
    small = make_image(tmp_path / "small.vdi", size=2 << 20, data={100: b"abc"})
    big = make_image(tmp_path / "big.raw", backend="RAW", size=5 << 20, data={100: b"abc"})
    for x, y in ((small, big), (big, small)):
        result = vdimg("compare", x, y)
        assert result.rc == 0, result.err
        assert "sizes differ" in result.text


def test_size_difference_with_data_in_tail(vdimg: Runner, tmp_path: Path) -> None:
    small = make_image(tmp_path / "small.vdi", size=2 << 20)
    big = make_image(tmp_path / "big.vdi", size=5 << 20, data={(4 << 20) + 3: b"\x01"})
    for x, y in ((small, big), (big, small)):
        result = vdimg("compare", x, y)
        assert result.rc == 1 and f"offset {(4 << 20) + 3} " in result.text


def test_zero_regions_are_not_read(vdimg: Runner, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two mostly empty 1 GiB images: only the one allocated block is read."""
    a = make_image(tmp_path / "a.vdi", size=1 << 30, data={512 << 20: b"\x01"})
    b = make_image(tmp_path / "b.vdi", size=1 << 30, data={512 << 20: b"\x01"})
    read: list[int] = []
    original = Disk.read_into

    def counting(self: Disk, offset: int, buf: memoryview) -> None:
        read.append(len(buf))
        original(self, offset, buf)

    monkeypatch.setattr(Disk, "read_into", counting)
    assert vdimg("compare", a, b).rc == 0
    assert sum(read) <= 2 << 20  # one 1 MiB block on each side


def test_format_options(vdimg: Runner, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.vdi", data=DATA)
    assert vdimg("compare", "-f", "vdi", "-F", "vdi", a, a).rc == 0
    # Forcing raw on a VDI compares the file's bytes with the virtual disk: different.
    assert vdimg("compare", "-F", "raw", a, a).rc == 1
    vdimg("compare", "-F", "nope", a, a).assert_error(2, "nope")


def test_progress(vdimg: Runner, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.vdi", data=DATA)
    result = vdimg("compare", "--progress", a, a)
    assert result.rc == 0 and "comparing" in result.err and "100%" in result.err


def test_missing_image(vdimg: Runner, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.vdi")
    vdimg("compare", a, tmp_path / "gone.vdi").assert_error(3, "gone.vdi")
