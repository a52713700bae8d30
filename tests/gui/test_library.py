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
