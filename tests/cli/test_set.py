"""``vdimg set``: UUIDs, comment, geometry, and relinking children."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from vdgui.engine import OpenFlags, open_chain
from vdgui.engine.ops import identity

from .helpers import Runner, content, make_diff, make_image, snapshot


def record(vdimg: Runner, path: Path) -> dict:
    result = vdimg("info", "--json", path)
    assert result.rc == 0, result.err
    return json.loads(result.out)


def test_set_comment_and_lchs(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=64 << 20)
    result = vdimg("set", "--comment", "hello there", "--lchs", "130/16/63", image)
    assert result.rc == 0, result.err
    assert "comment:" in result.text and "hello there" in result.text
    after = record(vdimg, image)
    assert after["comment"] == "hello there"
    assert after["lchs"] == {"cylinders": 130, "heads": 16, "sectors": 63}


def test_set_uuids(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi")
    before = record(vdimg, image)
    own, parent, mod = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert vdimg("set", "--uuid", str(own).upper(), "--parent-uuid", str(parent),
                 "--modification-uuid", str(mod), "--parent-modification-uuid",
                 str(parent), image).rc == 0
    after = record(vdimg, image)
    assert after["uuid"] == str(own) and after["parent_uuid"] == str(parent)
    assert after["modification_uuid"] == str(mod)
    assert after["parent_modification_uuid"] == str(parent)
    assert vdimg("set", "--uuid", "new", "--modification-uuid", "new", image).rc == 0
    again = record(vdimg, image)
    assert again["uuid"] not in (str(own), before["uuid"])
    assert again["modification_uuid"] != str(mod)


def test_uuid_new_with_child_keeps_chain_linked(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi", data={0: b"base data"})
    mid = make_diff(base, tmp_path / "mid.vdi", data={4096: b"mid data"})
    other = make_diff(base, tmp_path / "other.vdi")
    old = record(vdimg, base)["uuid"]
    result = vdimg("set", "--uuid", "new", "--child", mid, "--child", other, base)
    assert result.rc == 0, result.err
    new = record(vdimg, base)["uuid"]
    assert new != old
    assert record(vdimg, mid)["parent_uuid"] == new
    assert record(vdimg, other)["parent_uuid"] == new
    data = content(mid)
    assert data[:9] == b"base data" and data[4096:4104] == b"mid data"
    chain = json.loads(vdimg("info", "--json", "--chain", mid).out)["chain"]
    assert chain[0]["path"] == str(base)


def test_wrong_child_changes_nothing(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    child = make_diff(base, tmp_path / "child.vdi")
    stranger = make_image(tmp_path / "stranger.vdi")
    before = snapshot(base, child, stranger)
    vdimg("set", "--uuid", "new", "--child", child, "--child", stranger, base).assert_error(
        3, str(stranger), "not a child", "nothing was changed")
    assert snapshot(base, child, stranger) == before


def test_child_is_image_itself(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    vdimg("set", "--uuid", "new", "--child", base, base).assert_error(2, str(base))


def test_child_needs_uuid(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    child = make_diff(base, tmp_path / "child.vdi")
    vdimg("set", "--comment", "x", "--child", child, base).assert_error(2, "--child")


def test_nothing_to_set(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    vdimg("set", base).assert_error(2, str(base))


@pytest.mark.parametrize("args", [
    ["--uuid", "12345"], ["--parent-uuid", "new"], ["--pchs", "a/b/c"],
    ["--pchs", "100/17/63"], ["--lchs", "1/1/64"], ["--modification-uuid", ""]])
def test_bad_values_exit_2(vdimg: Runner, tmp_path: Path, args: list[str]) -> None:
    base = make_image(tmp_path / "base.vdi")
    before = snapshot(base)
    vdimg("set", *args, base).assert_error(2)
    assert snapshot(base) == before


def test_unsupported_field_changes_nothing(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.raw", backend="RAW", size=1 << 20)
    before = snapshot(image)
    vdimg("set", "--comment", "x", "--uuid", "new", image).assert_error(3, str(image))
    assert snapshot(image) == before


def test_set_parent_uuid_on_orphan(vdimg: Runner, tmp_path: Path) -> None:
    """Relinking works even when the current parent cannot be found."""
    base = make_image(tmp_path / "base.vdi")
    child = make_diff(base, tmp_path / "child.vdi")
    replacement = make_image(tmp_path / "replacement.vdi")
    base.unlink()
    new_parent = record(vdimg, replacement)["uuid"]
    assert vdimg("set", "--parent-uuid", new_parent, child).rc == 0
    chain = json.loads(vdimg("info", "--json", "--chain", child).out)["chain"]
    assert chain[0]["path"] == str(replacement)


def test_set_missing_image(vdimg: Runner, tmp_path: Path) -> None:
    vdimg("set", "--comment", "x", tmp_path / "none.vdi").assert_error(3, "none.vdi")


def test_unsupported_geometry_changes_no_byte(vdimg: Runner, tmp_path: Path) -> None:
    """VDI stores no physical geometry: refused before the comment is changed."""
    image = make_image(tmp_path / "a.vdi")
    before = image.read_bytes()
    vdimg("set", "--comment", "x", "--pchs", "10/16/63", image).assert_error(
        3, str(image), "physical geometry")
    assert image.read_bytes() == before


def test_uuid_goes_through_the_engine_operation(vdimg: Runner, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI and the GUI share ``identity.change_uuid``; other fields come first."""
    base = make_image(tmp_path / "base.vdi")
    child = make_diff(base, tmp_path / "child.vdi")
    calls = []
    original = identity.change_uuid

    def spy(path: str, new_uuid: uuid.UUID, children: list[str]) -> uuid.UUID:
        calls.append((path, new_uuid, list(children)))
        assert record(vdimg, base)["comment"] == "renamed"
        return original(path, new_uuid, children)

    monkeypatch.setattr(identity, "change_uuid", spy)
    wanted = uuid.uuid4()
    result = vdimg("set", "--uuid", str(wanted), "--comment", "renamed", "--child", child, base)
    assert result.rc == 0, result.err
    assert calls == [(str(base), wanted, [str(child)])]
    assert f"{base}: uuid: " in result.text and f"-> {wanted}" in result.text
    assert record(vdimg, child)["parent_uuid"] == str(wanted)
    assert content(child) == content(base)


def test_uuid_of_image_in_use(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    with open_chain(base, OpenFlags.NORMAL):
        before = snapshot(base)
        vdimg("set", "--uuid", "new", base).assert_error(3, str(base), "in use")
        assert snapshot(base) == before
