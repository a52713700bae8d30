"""``vdimg info`` and ``vdimg formats``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vdgui.cli.commands.info import KEYS
from vdgui.engine import backends

from .helpers import Runner, make_diff, make_image

#: The contract's key list (cli.md, "info --json keys"), spelled out independently.
CONTRACT_KEYS = {
    "path", "format", "type", "virtual_size", "file_size", "uuid", "parent_uuid",
    "modification_uuid", "parent_modification_uuid", "comment", "pchs", "lchs", "variant",
    "image_flags", "version", "read_only", "encrypted"}


def test_keys_match_contract() -> None:
    assert set(KEYS) == CONTRACT_KEYS and len(KEYS) == len(CONTRACT_KEYS)


def test_info_json_vdi(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=3 << 20)
    result = vdimg("info", "--json", image)
    assert result.rc == 0 and result.err == ""
    record = json.loads(result.out)
    assert set(record) == CONTRACT_KEYS
    assert record["path"] == str(image) and record["format"] == "vdi"
    assert record["type"] == "hdd" and record["virtual_size"] == 3 << 20
    assert record["file_size"] == image.stat().st_size
    assert record["parent_uuid"] is None and record["parent_modification_uuid"] is None
    assert record["uuid"] == record["uuid"].lower() and len(record["uuid"]) == 36
    assert record["variant"] == ["standard"] and record["image_flags"] == 0
    assert record["read_only"] is False and record["encrypted"] is False
    assert record["pchs"] is None  # VDI stores no physical geometry
    assert isinstance(record["version"], int)


def test_info_json_raw_nulls(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.raw", backend="RAW", size=1 << 20)
    record = json.loads(vdimg("info", "--json", image).out)
    assert record["format"] == "raw" and record["variant"] == ["fixed"]
    for key in ("uuid", "parent_uuid", "modification_uuid", "parent_modification_uuid",
                "comment", "pchs", "lchs"):
        assert record[key] is None, key


def test_info_chain_json(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    mid = make_diff(base, tmp_path / "mid.vdi")
    top = make_diff(mid, tmp_path / "top.vdi")
    result = vdimg("info", "--json", "--chain", top)
    assert result.rc == 0, result.err
    record = json.loads(result.out)
    assert set(record) == CONTRACT_KEYS | {"chain"}
    chain = record["chain"]
    assert [Path(r["path"]).name for r in chain] == ["base.vdi", "mid.vdi", "top.vdi"]
    assert all(set(r) == CONTRACT_KEYS for r in chain)
    assert {k: v for k, v in record.items() if k != "chain"} == chain[-1]
    assert chain[1]["parent_uuid"] == chain[0]["uuid"]
    assert chain[2]["parent_uuid"] == chain[1]["uuid"]
    assert chain[2]["image_flags"] & 0x20000  # VD_IMAGE_FLAGS_DIFF


def test_info_human(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=2 << 20)
    result = vdimg("info", image)
    lines = result.text.splitlines()
    assert [line.split(":")[0] for line in lines] == list(KEYS)
    assert "virtual_size:" in lines[3] and "2097152 (2.0 MiB)" in lines[3]
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines
               if line.split(":", 1)[1].strip()}
    assert len(columns) == 1  # values aligned in one column


def test_info_chain_human(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    top = make_diff(base, tmp_path / "top.vdi")
    text = vdimg("info", "--chain", top).text
    assert "image 0 of 2 (base):" in text and "image 1 of 2 (top):" in text


def test_orphan_diff_info_without_chain(vdimg: Runner, tmp_path: Path) -> None:
    """Info on a differencing image whose parent is gone still works; --chain says why."""
    base = make_image(tmp_path / "base.vdi")
    top = make_diff(base, tmp_path / "top.vdi")
    base.unlink()
    record = json.loads(vdimg("info", "--json", top).out)
    assert record["parent_uuid"] is not None
    vdimg("info", "--chain", top).assert_error(3, str(top), "parent", "--search-path")


def test_search_path_finds_parent(vdimg: Runner, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = make_image(tmp_path / "a" / "base.vdi")
    top = make_diff(base, tmp_path / "a" / "top.vdi")
    moved = tmp_path / "b" / "top.vdi"
    shutil.move(top, moved)
    vdimg("info", "--chain", moved).assert_error(3)
    result = vdimg("info", "--chain", "--json", "--search-path", tmp_path / "a", moved)
    assert result.rc == 0, result.err
    assert json.loads(result.out)["chain"][0]["path"] == str(base)


def test_forced_format(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi")
    record = json.loads(vdimg("info", "--json", "-f", "raw", image).out)
    assert record["format"] == "raw" and record["virtual_size"] == image.stat().st_size
    vdimg("info", "-f", "bogus", image).assert_error(2, "bogus")


def test_not_an_image(vdimg: Runner, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"hello")
    vdimg("info", junk).assert_error(3, str(junk))


def test_formats_lists_every_backend(vdimg: Runner) -> None:
    result = vdimg("formats")
    assert result.rc == 0
    for info in backends():
        assert f"{info.name.lower()}: {info.description}" in result.text
    records = json.loads(vdimg("formats", "--json").out)
    assert [r["name"] for r in records] == [i.name.lower() for i in backends()]
    vdi = next(r for r in records if r["name"] == "vdi")
    assert set(vdi) == {"name", "description", "capabilities", "extensions", "variants", "operations",
                        "config_keys"}
    assert "diff" in vdi["capabilities"] and {"extension": "vdi", "type": "hdd"} in \
        vdi["extensions"]
    assert "fixed" in vdi["variants"]
    assert any(k["name"] == "AllocationBlockSize" for k in vdi["config_keys"])


def test_formats_lists_operations(vdimg: Runner) -> None:
    records = {r["name"]: r for r in json.loads(vdimg("formats", "--json").out)}
    assert "compact" in records["vdi"]["operations"]
    assert "compress" in records["qcow2"]["operations"]
    assert records["dmg"]["operations"] == []
