"""``vdimg map`` and ``vdimg dump``."""

from __future__ import annotations

import json
from pathlib import Path

from vdgui.cli.commands.map import extents
from vdgui.engine import MapExtent, Status

from .helpers import Runner, make_diff, make_image

MIB = 1 << 20


def test_map_json_chain(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi", size=8 * MIB,
                      data={0: b"b" * MIB, MIB: b"b" * MIB, 5 * MIB: b"b"})
    top = make_diff(base, tmp_path / "top.vdi", data={MIB: b"t" * MIB, 2 * MIB: b"t"})
    result = vdimg("map", "--json", top)
    assert result.rc == 0, result.err
    found = json.loads(result.out)
    assert all(set(e) == {"offset", "length", "depth", "path", "zero"} for e in found)
    assert [(e["offset"], e["length"], e["depth"], e["zero"]) for e in found] == [
        (0, MIB, 0, False),
        (MIB, 2 * MIB, 1, False),  # two adjacent blocks of the top: merged
        (3 * MIB, 2 * MIB, None, True),
        (5 * MIB, MIB, 0, False),
        (6 * MIB, 2 * MIB, None, True),
    ]
    paths = {e["depth"]: e["path"] for e in found}
    assert Path(paths[0]) == base and Path(paths[1]) == top and paths[None] is None


def test_map_empty_image_is_one_extent(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=3 * MIB)
    found = json.loads(vdimg("map", "--json", image).out)
    assert found == [{"offset": 0, "length": 3 * MIB, "depth": None, "path": None,
                      "zero": True}]


def test_extents_merge_kinds_of_zero() -> None:
    """Extents the engine keeps apart (zero block vs preallocated zeros) merge."""
    merged = extents([
        MapExtent(0, 10, 0, "a", True, Status.ZERO),
        MapExtent(10, 5, 0, "a", True, Status.ALLOCATED_ZERO),
        MapExtent(15, 5, 0, "a", False, Status.DATA),
    ])
    assert merged == [{"offset": 0, "length": 15, "depth": 0, "path": "a", "zero": True},
                      {"offset": 15, "length": 5, "depth": 0, "path": "a", "zero": False}]


def test_map_human(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=2 * MIB, data={0: b"x"})
    lines = vdimg("map", image).text.splitlines()
    assert lines[0].split() == ["offset", "length", "depth", "zero", "path"]
    assert lines[1].split() == ["0x0", "0x100000", "0", "no", str(image)]
    assert lines[2].split() == ["0x100000", "0x100000", "-", "yes", "-"]


def test_dump_chain(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    top = make_diff(base, tmp_path / "top.vdi")
    result = vdimg("dump", top)
    assert result.rc == 0
    heads = [line for line in result.text.splitlines() if line.startswith("Dumping")]
    assert len(heads) == 2 and str(base) in heads[0] and str(top) in heads[1]
    assert "block size" in result.text


def test_map_and_dump_missing(vdimg: Runner, tmp_path: Path) -> None:
    vdimg("map", tmp_path / "x.vdi").assert_error(3, "x.vdi")
    vdimg("dump", tmp_path / "x.vdi").assert_error(3, "x.vdi")
