"""``vdimg check`` and ``vdimg repair``."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .helpers import Runner, make_image

MAP = 0x100000


def damage(image: Path) -> None:
    raw = bytearray(image.read_bytes())
    struct.pack_into("<I", raw, MAP + 8, 55)  # block 2 -> a physical block never allocated
    image.write_bytes(bytes(raw))


def test_clean_image(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=4 << 20)
    result = vdimg("check", image)
    assert result.rc == 0 and "no problems" in result.text


def test_check_reports_and_changes_nothing(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=4 << 20)
    damage(image)
    before, mtime = image.read_bytes(), os.stat(image).st_mtime_ns
    result = vdimg("check", "--json", image)
    assert result.rc == 1
    report = json.loads(result.out)
    assert set(report) == {"path", "format", "clean", "problems", "repaired", "leaked_bytes"}
    assert report["clean"] is False and report["repaired"] is False
    (problem,) = report["problems"]
    assert set(problem) == {"severity", "what", "offset", "fix"}
    assert problem["severity"] == "error" and problem["offset"] == MAP + 8
    assert image.read_bytes() == before and os.stat(image).st_mtime_ns == mtime


def test_repair_fixes_what_check_found(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=4 << 20)
    damage(image)
    result = vdimg("repair", "--json", image)
    assert result.rc == 0
    report = json.loads(result.out)
    assert report["repaired"] is True and report["clean"] is True
    assert vdimg("check", image).rc == 0


def test_unrepairable_damage_exits_3(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=4 << 20)
    raw = bytearray(image.read_bytes())
    struct.pack_into("<I", raw, 0x178, 1000)  # block size: the header cannot be rebuilt
    image.write_bytes(bytes(raw))
    result = vdimg("repair", "-f", "vdi", image)
    assert result.rc == 3 and "cannot be repaired" in result.text
    assert vdimg("check", "-f", "vdi", image).rc == 1


def test_missing_file(vdimg: Runner, tmp_path: Path) -> None:
    vdimg("check", tmp_path / "nope.vdi").assert_error(3, "nope.vdi")
