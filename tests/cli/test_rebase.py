"""``vdimg rebase``: safe and unsafe re-parenting, refusals, cancellation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vdgui.engine.ops import rebase

from .helpers import Runner, content, make_diff, make_image, snapshot

MIB = 1 << 20


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(old parent, new parent, child): the parents differ in two blocks."""
    old = make_image(tmp_path / "old.vdi", data={0: b"o" * MIB, 2 * MIB: b"old only"})
    new = make_image(tmp_path / "new.vdi", data={0: b"o" * MIB, MIB: b"new only"})
    child = make_diff(old, tmp_path / "child.vdi", data={3 * MIB: b"child"})
    return old, new, child


def chain(vdimg: Runner, image: Path) -> list[dict]:
    result = vdimg("info", "--json", "--chain", image)
    assert result.rc == 0, result.err
    return json.loads(result.out)["chain"]


def test_safe_rebase_keeps_content(vdimg: Runner,
                                   images: tuple[Path, Path, Path]) -> None:
    old, new, child = images
    expected = content(child)
    parents = snapshot(old, new)
    result = vdimg("rebase", child, new)
    assert result.rc == 0, result.err
    assert "content is unchanged" in result.text
    links = chain(vdimg, child)
    assert [Path(r["path"]).name for r in links] == ["new.vdi", "child.vdi"]
    assert links[1]["parent_uuid"] == links[0]["uuid"]
    assert content(child) == expected
    assert snapshot(old, new) == parents


def test_unsafe_rebase_only_relinks(vdimg: Runner, images: tuple[Path, Path, Path]) -> None:
    old, new, child = images
    old.unlink()  # the old parent need not exist
    result = vdimg("rebase", "--unsafe", child, new)
    assert result.rc == 0, result.err
    assert "unsafe" in result.text
    data = content(child)
    assert data[MIB:MIB + 8] == b"new only" and not any(data[2 * MIB:2 * MIB + 8])
    assert data[3 * MIB:3 * MIB + 5] == b"child"


def test_onto_itself_refused(vdimg: Runner, images: tuple[Path, Path, Path]) -> None:
    child = images[2]
    before = snapshot(*images)
    vdimg("rebase", child, child).assert_error(3, str(child), "own parent")
    assert snapshot(*images) == before


def test_missing_new_parent(vdimg: Runner, tmp_path: Path,
                            images: tuple[Path, Path, Path]) -> None:
    before = snapshot(*images)
    vdimg("rebase", images[2], tmp_path / "gone.vdi").assert_error(3, "gone.vdi")
    assert snapshot(*images) == before


def test_format_option(vdimg: Runner, images: tuple[Path, Path, Path]) -> None:
    old, new, child = images
    before = snapshot(*images)
    vdimg("rebase", "-f", "raw", child, new).assert_error(2, str(child), "vdi", "raw")
    assert snapshot(*images) == before
    assert vdimg("rebase", "-f", "VDI", child, new).rc == 0


def test_ctrl_c_keeps_the_old_link(vdimg: Runner, images: tuple[Path, Path, Path],
                                   ctrl_c: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rebase, "CHUNK", MIB)  # one step per block
    old, new, child = images
    expected = content(child)
    vdimg("rebase", "--progress", child, new).assert_error(3, str(child), "cancelled")
    assert [Path(r["path"]).name for r in chain(vdimg, child)] == ["old.vdi", "child.vdi"]
    assert content(child) == expected
