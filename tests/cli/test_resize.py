"""``vdimg resize``: growing, relative sizes, the --shrink and --force rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vdgui.engine import ImageFlags

from .helpers import Runner, content, make_diff, make_image, snapshot

MIB = 1 << 20


def virtual_size(vdimg: Runner, image: Path) -> int:
    result = vdimg("info", "--json", image)
    assert result.rc == 0, result.err
    return json.loads(result.out)["virtual_size"]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """4 MiB with data in the first and the last block."""
    return make_image(tmp_path / "a.vdi", data={0: b"head" * 100, 3 * MIB + 5: b"tail"})


@pytest.mark.parametrize("size, expected", [
    ("6M", 6 * MIB), ("+2M", 6 * MIB), ("+1000", 4 * MIB + 1024), ("4194305", 4 * MIB + 512)])
def test_grow_keeps_content(vdimg: Runner, image: Path, size: str, expected: int) -> None:
    before = content(image)
    result = vdimg("resize", image, size)
    assert result.rc == 0, result.err
    assert f"resized {image} from 4194304 (4.0 MiB) to {expected}" in result.text
    assert virtual_size(vdimg, image) == expected
    after = content(image)
    assert after[:4 * MIB] == before and not any(after[4 * MIB:])


def test_grow_differencing_image(vdimg: Runner, image: Path, tmp_path: Path) -> None:
    top = make_diff(image, tmp_path / "top.vdi", data={MIB: b"top"})
    before = content(top)
    assert vdimg("resize", top, "+3M").rc == 0
    assert content(top)[:4 * MIB] == before and virtual_size(vdimg, top) == 7 * MIB
    assert virtual_size(vdimg, image) == 4 * MIB  # the parent is not touched


def test_grow_fixed(vdimg: Runner, tmp_path: Path) -> None:
    fixed = make_image(tmp_path / "f.vdi", size=2 * MIB, flags=ImageFlags.FIXED,
                       data={5: b"fixed"})
    before = content(fixed)
    result = vdimg("resize", "--progress", fixed, "+2M")
    assert result.rc == 0 and "resizing" in result.err
    assert content(fixed) == before + bytes(2 * MIB)


def test_same_size_changes_nothing(vdimg: Runner, image: Path) -> None:
    before = snapshot(image)
    result = vdimg("resize", image, "4M")
    assert result.rc == 0 and "nothing was changed" in result.text
    assert snapshot(image) == before


@pytest.mark.parametrize("size", ["3M", "-1M", "-1.5M"])
def test_shrink_needs_shrink(vdimg: Runner, image: Path, size: str) -> None:
    before = snapshot(image)
    vdimg("resize", image, size).assert_error(2, str(image), "smaller", "--shrink")
    vdimg("resize", image, "--", size).assert_error(2, "--shrink")
    assert snapshot(image) == before


@pytest.mark.parametrize("size, needles", [
    ("-4M", ["larger than 0"]), ("-5M", ["larger than 0"]), ("0", ["larger than 0"]),
    ("+x", ["SIZE", "'x'"]), ("ten", ["SIZE", "'ten'"])])
def test_bad_sizes(vdimg: Runner, image: Path, size: str, needles: list[str]) -> None:
    before = snapshot(image)
    vdimg("resize", "--shrink", image, size).assert_error(2, *needles)
    assert snapshot(image) == before


def test_shrink_over_unallocated_part(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data={MIB: b"kept"})
    before = content(image)
    result = vdimg("resize", "--shrink", image, "-2M")
    assert result.rc == 0, result.err
    assert content(image) == before[:2 * MIB]


def test_shrink_refused_over_data(vdimg: Runner, image: Path) -> None:
    before = snapshot(image)
    vdimg("resize", "--shrink", image, "2M").assert_error(
        3, str(image), f"offset {3 * MIB}")
    assert snapshot(image) == before


@pytest.mark.parametrize("flags", [["--force"], ["--shrink", "--force"]])
def test_force_cuts_data_off(vdimg: Runner, image: Path, flags: list[str]) -> None:
    before = content(image)
    result = vdimg("resize", *flags, image, "3000000")
    assert result.rc == 0, result.err
    assert "discarded first" in result.text
    assert content(image) == before[:3000320]  # rounded up to a whole sector
    assert virtual_size(vdimg, image) == 3000320
    # Grown again, the cut-off part reads as zeros: nothing of the old tail is left.
    assert vdimg("resize", image, "4M").rc == 0
    assert content(image) == before[:3000320] + bytes(4 * MIB - 3000320)


def test_force_without_need_is_a_plain_shrink(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data={0: b"x"})
    result = vdimg("resize", "--force", image, "2M")
    assert result.rc == 0 and "discarded" not in result.text


def test_force_on_a_diff(vdimg: Runner, image: Path, tmp_path: Path) -> None:
    top = make_diff(image, tmp_path / "top.vdi", data={3 * MIB + 100: b"top tail"})
    parent = snapshot(image)
    before = content(top)
    result = vdimg("resize", "--force", top, "3M")
    assert result.rc == 0 and "discarded first" in result.text
    assert content(top) == before[:3 * MIB]
    assert snapshot(image) == parent


def test_force_on_fixed_image_refused(vdimg: Runner, tmp_path: Path) -> None:
    fixed = make_image(tmp_path / "f.vdi", size=4 * MIB, flags=ImageFlags.FIXED,
                       data={0: b"x"})
    before = snapshot(fixed)
    vdimg("resize", "--force", fixed, "2M").assert_error(
        3, str(fixed), "--force cannot", "fixed", "nothing was changed")
    assert snapshot(fixed) == before


def test_force_without_discard_refused(vdimg: Runner, tmp_path: Path) -> None:
    raw = make_image(tmp_path / "a.raw", backend="RAW", data={3 << 20: b"x"})
    before = snapshot(raw)
    vdimg("resize", "--force", raw, "2M").assert_error(
        3, str(raw), "--force cannot", "cannot discard", "nothing was changed")
    assert snapshot(raw) == before


def test_image_that_cannot_resize(vdimg: Runner, tmp_path: Path) -> None:
    from tests.formats.raw.test_raw import make_iso
    image = tmp_path / "disc.iso"
    make_iso(image)
    before = snapshot(image)
    vdimg("resize", image, "8M").assert_error(3, str(image), "read-only")
    assert snapshot(image) == before


def test_ctrl_c_while_growing_fixed(vdimg: Runner, tmp_path: Path, ctrl_c: None) -> None:
    fixed = make_image(tmp_path / "f.vdi", size=MIB, flags=ImageFlags.FIXED, data={0: b"x"})
    before = content(fixed)
    vdimg("resize", "--progress", fixed, "+200M").assert_error(3, str(fixed), "cancelled")
    assert virtual_size(vdimg, fixed) == MIB and content(fixed) == before
