"""The media library (Qt-free): persistence, chains, broken and missing files."""

from __future__ import annotations

import json
import os

from vdgui.engine import OpenFlags, open_chain
from vdgui.engine.chain import ParentNotFound
from vdgui.library import Library, app_dir, check_new_entry, default_library_path, scan

from .helpers import make_chain


def test_paths_follow_vdgui_home(hermetic_home):
    assert app_dir("data") == hermetic_home / "data"
    assert default_library_path() == hermetic_home / "data" / "library.json"
    assert Library().path == default_library_path()


def test_entries_persist_and_deduplicate(tmp_path):
    path = tmp_path / "lib" / "library.json"
    library = Library(path)
    assert library.entries == []
    image = tmp_path / "a.vdi"
    assert library.add([image, str(image), tmp_path / "." / "a.vdi"]) == [str(image)]
    assert json.loads(path.read_text())["images"] == [str(image)]
    assert Library(path).entries == [str(image)]
    assert image in Library(path)
    assert library.remove([image]) == [str(image)]
    assert Library(path).entries == []


def test_a_damaged_library_file_is_kept_aside(tmp_path):
    path = tmp_path / "library.json"
    path.write_text("{not json")
    library = Library(path)
    assert library.entries == []
    assert (tmp_path / "library.json.bad").read_text() == "{not json"


def test_scan_builds_chains_and_never_writes(tmp_path):
    base, diff1, diff2 = make_chain(tmp_path)
    before = {p: p.read_bytes() for p in (base, diff1, diff2)}
    tree = scan([str(diff2), str(base)])
    assert [n.name for n in tree.roots] == ["base.vdi"]
    node = tree.find(diff2)
    assert [a.name for a in node.ancestors()] == ["base.vdi", "diff1.vdi"]
    assert node.in_library and tree.find(base).in_library and not tree.find(diff1).in_library
    assert node.info.is_diff and node.info.size == tree.find(base).info.size
    assert node.info.open_flags & OpenFlags.READONLY
    assert [n.name for n in tree.find(base).descendants()] == ["diff1.vdi", "diff2.vdi"]
    assert tree.entries_through(tree.find(diff1)) == [tree.find(diff2).key]
    assert {p: p.read_bytes() for p in (base, diff1, diff2)} == before


def test_missing_and_orphaned_images_are_reported(tmp_path):
    base, diff1, diff2 = make_chain(tmp_path)
    with open_chain(diff1, OpenFlags.READONLY | OpenFlags.INFO) as disk:
        uuid1 = disk[-1].uuid
    os.unlink(diff1)
    tree = scan([str(diff2), str(tmp_path / "missing.vdi")])
    orphan = tree.find(diff2)
    assert orphan.info is not None and isinstance(orphan.error, ParentNotFound)
    assert orphan.info.parent_uuid == uuid1
    missing = tree.find(tmp_path / "missing.vdi")
    assert missing.info is None and missing.error.status == "VERR_FILE_NOT_FOUND"
    assert isinstance(check_new_entry(str(diff2)), ParentNotFound)
    assert check_new_entry(str(base)) is None


def test_search_paths_persist_and_replace_keeps_order(tmp_path):
    path = tmp_path / "library.json"
    library = Library(path)
    a, b, c = (str(tmp_path / n) for n in ("a.vdi", "b.vdi", "c.vdi"))
    library.add([a, b])
    assert library.add_search_path(tmp_path / "parents")
    assert not library.add_search_path(tmp_path / "parents")
    assert library.replace(a, c) and library.entries == [c, b]
    assert library.replace(c, b) and library.entries == [b]  # already there: merged
    assert not library.replace(a, b)
    again = Library(path)
    assert again.entries == [b] and again.search_paths == [str(tmp_path / "parents")]


def test_scan_reports_uuid_mismatches_duplicates_and_broken_chains(tmp_path):
    import shutil
    import uuid as uuidlib

    from vdgui.engine import Disk
    from vdgui.engine.errors import UuidMismatch
    from vdgui.library import ChainBroken

    base, diff = tmp_path / "base.vhd", tmp_path / "diff.vhd"
    top = tmp_path / "top.vhd"
    with Disk() as disk:
        disk.create_base(base, 1 << 20, "VHD")
        disk.create_diff(diff)
        disk.create_diff(top)
    with Disk() as disk:
        disk.open(base, None, OpenFlags.INFO)
        disk.set_uuid(0, uuidlib.uuid4())  # the children still name the old UUID
    (tmp_path / "copies").mkdir()
    shutil.copy(base, tmp_path / "copies" / "base.vhd")
    tree = scan([str(top), str(tmp_path / "copies" / "base.vhd")])
    assert isinstance(tree.find(diff).error, UuidMismatch)
    assert "re-link it" in tree.find(diff).error.message
    assert isinstance(tree.find(top).error, ChainBroken)  # above the broken link
    assert "diff.vhd" in tree.find(top).error.message
    assert tree.find(base).ok and not tree.find(base).error
    assert [n.name for n in tree.find(base).same_uuid] == ["base.vhd"]
    assert len(tree.duplicates) == 1


def test_partial_chains_are_shown_up_to_the_missing_parent(tmp_path):
    from vdgui.engine.chain import ParentNotFound
    from vdgui.library import ChainBroken
    base, diff1, diff2 = make_chain(tmp_path)
    os.unlink(base)
    tree = scan([str(diff2)])
    assert [n.name for n in tree.roots] == ["diff1.vdi"]
    assert isinstance(tree.find(diff1).error, ParentNotFound)
    assert tree.find(diff1).info is not None  # readable: only its parent is missing
    assert isinstance(tree.find(diff2).error, ChainBroken)
    assert tree.find(diff2).in_library
