"""``vdimg compact``: what is released, dry run, refusals, cancellation."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdgui.engine import Disk, OpenFlags
from vdgui.engine.ops import compact

from .helpers import Runner, content, make_diff, make_image, snapshot

MIB = 1 << 20


def write_alone(path: Path, offset: int, data: bytes) -> None:
    """Write into an image opened without its parents (so nothing is compared with
    them): the way a block repeating the parent's content gets stored."""
    with Disk() as disk:
        disk.open(path, "VDI", OpenFlags.INFO)
        disk.write(offset, data)
        disk.flush()


@pytest.fixture
def wasteful(tmp_path: Path) -> Path:
    """A diff holding a block that repeats its parent, an allocated block of zeros
    (hiding the parent's data there) and a block of its own data."""
    base = make_image(tmp_path / "base.vdi", size=4 * MIB,
                      data={0: b"p" * MIB, 3 * MIB: b"q" * MIB})
    top = make_diff(base, tmp_path / "top.vdi", data={2 * MIB: b"own data",
                                                      3 * MIB: b"z" * MIB})
    write_alone(top, 0, b"p" * MIB)        # same as below
    write_alone(top, 3 * MIB, bytes(MIB))  # zeros written in place stay allocated
    return top


def test_compact_releases_and_keeps_content(vdimg: Runner, wasteful: Path) -> None:
    expected = content(wasteful)
    size_before = wasteful.stat().st_size
    result = vdimg("compact", wasteful)
    assert result.rc == 0, result.err
    assert content(wasteful) == expected
    reclaimed = size_before - wasteful.stat().st_size
    assert reclaimed == 2 * MIB
    text = result.text
    assert f"compacted {wasteful}: 2097152 (2.0 MiB) reclaimed" in text
    assert "same as the images below:  1048576 (1.0 MiB)" in text
    assert "all-zero blocks:           1048576 (1.0 MiB)" in text
    assert "allocated blocks examined: 3145728 (3.0 MiB)" in text
    # A second run finds nothing more.
    assert "0 (0 Bytes) reclaimed" in vdimg("compact", wasteful).text


def test_compact_base(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data={0: b"x" * (2 * MIB)})
    with Disk() as disk:  # overwrite the second block with zeros: it stays allocated
        disk.open(image, "VDI")
        disk.write(MIB, bytes(MIB))
    expected = content(image)
    result = vdimg("compact", image)
    assert result.rc == 0, result.err
    assert "1048576 (1.0 MiB) reclaimed" in result.text
    assert content(image) == expected


def test_dry_run_changes_nothing(vdimg: Runner, tmp_path: Path, wasteful: Path) -> None:
    before = snapshot(*tmp_path.iterdir())
    result = vdimg("compact", "--dry-run", wasteful)
    assert result.rc == 0, result.err
    assert f"compacting {wasteful} would release 2097152 (2.0 MiB)" in result.text
    assert "same as the images below:  1048576 (1.0 MiB)" in result.text
    assert "nothing was changed" in result.text
    assert snapshot(*tmp_path.iterdir()) == before


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_format_that_cannot_compact(vdimg: Runner, tmp_path: Path,
                                    dry_run: list[str]) -> None:
    image = make_image(tmp_path / "a.raw", backend="RAW", data={0: bytes(MIB)})
    before = snapshot(image)
    vdimg("compact", *dry_run, image).assert_error(3, str(image), "cannot be compacted")
    assert snapshot(image) == before


def test_image_in_use(vdimg: Runner, wasteful: Path) -> None:
    with Disk() as holder:
        holder.open(wasteful, "VDI", OpenFlags.INFO)
        before = snapshot(wasteful)
        vdimg("compact", wasteful).assert_error(3, str(wasteful), "in use")
        assert snapshot(wasteful) == before


def test_missing_image(vdimg: Runner, tmp_path: Path) -> None:
    vdimg("compact", tmp_path / "none.vdi").assert_error(3, "none.vdi")


def test_progress(vdimg: Runner, wasteful: Path) -> None:
    result = vdimg("compact", "--progress", wasteful)
    assert result.rc == 0 and "compacting" in result.err and "100%" in result.err


def test_ctrl_c_keeps_content(vdimg: Runner, wasteful: Path, ctrl_c: None,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compact, "CHUNK", MIB)  # one step per block
    expected = content(wasteful)
    vdimg("compact", "--progress", wasteful).assert_error(3, str(wasteful), "cancelled")
    assert content(wasteful) == expected
    assert vdimg("compact", wasteful).rc == 0  # and it can simply be run again
    assert content(wasteful) == expected
