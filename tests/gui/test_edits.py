"""The edit functions behind the panels and wizards (Qt-free), on real files."""

from __future__ import annotations

import uuid

import pytest

from vdgui.engine import Geometry, ImageFlags, OpenFlags, discover_chain, open_chain
from vdgui.engine.errors import InvalidParameter, NotSupported
from vdgui.gui import edits

from .helpers import make_chain


def uuids(path):  # type: ignore[no-untyped-def]
    with open_chain(path, OpenFlags.READONLY | OpenFlags.INFO) as disk:
        image = disk[-1]
        return {name: getattr(image, name) for name in edits.UUID_FIELDS}


def test_modification_uuid_change_relinks_children(tmp_path):
    base, diff1, diff2 = make_chain(tmp_path)
    new_mod, new_uuid = uuid.uuid4(), uuid.uuid4()
    changes = edits.set_uuids(str(diff1), {"modification_uuid": new_mod, "uuid": new_uuid},
                              [str(diff2)])
    assert changes.changed == (str(diff1), str(diff2))
    assert uuids(diff1)["modification_uuid"] == new_mod
    assert uuids(diff2)["parent_modification_uuid"] == new_mod
    assert uuids(diff2)["parent_uuid"] == new_uuid
    assert len(discover_chain(diff2)) == 3


def test_children_that_do_not_refer_to_the_image_are_left_alone(tmp_path):
    base, diff1, diff2 = make_chain(tmp_path)
    before = diff2.read_bytes()
    edits.set_uuids(str(base), {"uuid": uuid.uuid4()}, [str(diff2)])
    assert diff2.read_bytes() == before


def test_validation_refuses_before_opening():
    with pytest.raises(InvalidParameter, match="not a valid UUID"):
        edits.parse_uuid_text("12-34")
    assert edits.parse_uuid_text(" {00000000-0000-0000-0000-00000000000A} ") == \
        uuid.UUID(int=10)
    with pytest.raises(InvalidParameter, match="at most 16 heads"):
        edits.validate_geometry(Geometry(10, 17, 63), physical=True)
    with pytest.raises(InvalidParameter, match="incomplete"):
        edits.validate_geometry(Geometry(10, 0, 63), physical=False)
    edits.validate_geometry(Geometry(), physical=True)  # "not stored" is fine


def test_physical_geometry_of_a_format_without_one(tmp_path):
    base, _, _ = make_chain(tmp_path)
    before = base.read_bytes()
    with pytest.raises(NotSupported, match="physical geometry"):  # VDI stores none
        edits.set_geometry(str(base), Geometry(100, 16, 63), None)
    assert base.read_bytes() == before


def test_create_params_give_the_vdimg_command():
    params = edits.CreateParams("/tmp/a b.vdi", "VDI", ImageFlags.FIXED, 3 << 30, "my disk")
    assert params.command() == "vdimg create -f vdi -v fixed --comment 'my disk' " \
                               "'/tmp/a b.vdi' 3G"
    diff = edits.CreateParams("/tmp/d.vdi", "VDI", parent="/tmp/a.vdi")
    assert diff.command() == "vdimg create -f vdi --parent /tmp/a.vdi /tmp/d.vdi"
    odd = edits.CreateParams("/x.raw", "RAW", ImageFlags.FIXED, 1536)
    assert odd.command().endswith(" 1536")


def test_create_refuses_to_overwrite(tmp_path):
    existing = tmp_path / "x.vdi"
    existing.write_bytes(b"mine")
    with pytest.raises(InvalidParameter, match="already exists"):
        edits.create_image(edits.CreateParams(str(existing), "VDI", size=1 << 20))
    assert existing.read_bytes() == b"mine"
