"""``vdimg convert``: content, formats and variants, sizes, refusals, cancellation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vdgui.engine import Disk
from vdgui.engine.errors import DiskFull
from vdgui.engine.ops import copy

from .helpers import Runner, content, make_diff, make_image, snapshot

MIB = 1 << 20
DATA = {0: b"\x11" * 4096, 3 * MIB + 17: b"tail data"}


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    """A two-image VDI chain; the top hides part of the base's data."""
    base = make_image(tmp_path / "base.vdi", data=DATA)
    return make_diff(base, tmp_path / "top.vdi", data={MIB: b"top" * 1000, 0: b"\x22" * 512})


def info(vdimg: Runner, path: Path, *extra: str) -> dict:
    result = vdimg("info", "--json", *extra, path)
    assert result.rc == 0, result.err
    return json.loads(result.out)


def test_chain_to_standalone_vdi(vdimg: Runner, tmp_path: Path, chain: Path) -> None:
    dst = tmp_path / "copy.vdi"
    result = vdimg("convert", chain, dst)
    assert result.rc == 0, result.err
    assert str(dst) in result.text and "chain of 2 images" in result.text
    assert content(dst) == content(chain)
    record = info(vdimg, dst)
    assert record["format"] == "vdi" and record["variant"] == ["standard"]
    assert record["parent_uuid"] is None and record["virtual_size"] == 4 * MIB
    extents = json.loads(vdimg("map", "--json", dst).out)
    assert {"offset": 2 * MIB, "length": MIB, "depth": None, "path": None,
            "zero": True} in extents  # what no image held stays unallocated
    assert info(vdimg, dst, "--chain")["chain"][0]["path"] == str(dst)


@pytest.mark.parametrize("name, args, fmt, variant", [
    ("copy.raw", [], "raw", ["fixed"]),
    ("copy.disk", [], "vdi", ["standard"]),  # no known extension: SRC's format
    ("copy.disk", ["-O", "raw"], "raw", ["fixed"]),
    ("copy.vdi", ["-v", "fixed"], "vdi", ["fixed"]),
    ("copy.img", ["-O", "QCOW2"], "qcow2", ["standard"]),
])
def test_format_and_variant(vdimg: Runner, tmp_path: Path, chain: Path, name: str,
                            args: list[str], fmt: str, variant: list[str]) -> None:
    dst = tmp_path / name
    result = vdimg("convert", *args, chain, dst)
    assert result.rc == 0, result.err
    record = info(vdimg, dst, "-f", fmt)  # raw is probed by extension only
    assert record["format"] == fmt and record["variant"] == variant
    assert content(dst, fmt) == content(chain)


def test_option_passed_to_backend(vdimg: Runner, tmp_path: Path, chain: Path) -> None:
    dst = tmp_path / "o.vdi"
    assert vdimg("convert", "-o", "AllocationBlockSize=2M", chain, dst).rc == 0
    assert "block size: 2097152" in vdimg("dump", dst).text
    assert content(dst) == content(chain)


def test_larger_size(vdimg: Runner, tmp_path: Path, chain: Path) -> None:
    dst = tmp_path / "big.vdi"
    assert vdimg("convert", "--size", "6000001", chain, dst).rc == 0
    data = content(dst)
    assert len(data) == 6000128  # rounded up to a whole sector
    assert data[:4 * MIB] == content(chain) and not any(data[4 * MIB:])


def test_smaller_size_only_over_zeros(vdimg: Runner, tmp_path: Path, chain: Path) -> None:
    dst = tmp_path / "small.vdi"
    vdimg("convert", "--size", "3M", chain, dst).assert_error(
        3, str(dst), f"offset {3 * MIB}", "nothing was created")
    assert not dst.exists()
    result = vdimg("convert", "--size", "2M", make_image(tmp_path / "a.vdi", data={0: b"x"}),
                   dst)
    assert result.rc == 0, result.err
    assert content(dst) == b"x" + bytes(2 * MIB - 1)


@pytest.mark.parametrize("args, needles", [
    (["-O", "nosuch"], ["nosuch"]),
    (["-O", "dmg"], ["dmg", "cannot create"]),
    (["-v", "stream"], ["vdi", "stream", "standard, fixed, zero-expand"]),
    (["-O", "raw", "-v", "standard"], ["raw", "standard"]),
    (["-o", "Colour=blue"], ["Colour"]),
    (["--size", "0"], ["larger than 0"]),
    (["--size", "lots"], ["--size", "lots"]),
])
def test_usage_errors(vdimg: Runner, tmp_path: Path, chain: Path, args: list[str],
                      needles: list[str]) -> None:
    dst = tmp_path / "u.vdi"
    vdimg("convert", *args, chain, dst).assert_error(2, *needles)
    assert not dst.exists()


def test_existing_destination_untouched(vdimg: Runner, tmp_path: Path, chain: Path) -> None:
    dst = tmp_path / "exists.vdi"
    dst.write_bytes(b"precious")
    vdimg("convert", chain, dst).assert_error(3, str(dst), "exists")
    assert dst.read_bytes() == b"precious"


def test_missing_source(vdimg: Runner, tmp_path: Path) -> None:
    dst = tmp_path / "d.vdi"
    vdimg("convert", tmp_path / "none.vdi", dst).assert_error(3, "none.vdi")
    assert not dst.exists()


def test_source_format_forced(vdimg: Runner, tmp_path: Path) -> None:
    """-f names SRC's format: a VDI file copied as raw bytes."""
    src = make_image(tmp_path / "a.vdi", data=DATA)
    dst = tmp_path / "bytes.raw"
    assert vdimg("convert", "-f", "raw", src, dst).rc == 0
    assert dst.read_bytes() == src.read_bytes()


def test_progress(vdimg: Runner, tmp_path: Path, chain: Path) -> None:
    result = vdimg("convert", "--progress", chain, tmp_path / "p.vdi")
    assert result.rc == 0 and "converting" in result.err and "100%" in result.err
    assert vdimg("convert", chain, tmp_path / "q.vdi").err == ""


def test_ctrl_c_leaves_no_destination(vdimg: Runner, tmp_path: Path, chain: Path,
                                      ctrl_c: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 256 << 10)  # several steps for a small image
    before = snapshot(*tmp_path.iterdir())
    dst = tmp_path / "c.vdi"
    vdimg("convert", "--progress", chain, dst).assert_error(3, str(chain), "cancelled")
    assert not dst.exists()
    assert snapshot(*tmp_path.iterdir()) == before


def test_failure_leaves_no_destination(vdimg: Runner, tmp_path: Path, chain: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 256 << 10)
    original = Disk.write
    calls = 0

    def fail_later(self: Disk, offset: int, data: bytes, **kwargs: bool) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise DiskFull("no space left on the device", self.image(-1).path)
        original(self, offset, data, **kwargs)

    monkeypatch.setattr(Disk, "write", fail_later)
    dst = tmp_path / "f.vdi"
    vdimg("convert", chain, dst).assert_error(3, str(dst), "no space")
    assert calls == 2 and not dst.exists()


def test_compressed_convert(vdimg: Runner, tmp_path: Path) -> None:
    src = make_image(tmp_path / "a.vdi", data={0: bytes(range(256)) * 4096})
    assert vdimg("convert", "-c", src, tmp_path / "out.qcow2").rc == 0
    assert vdimg("compare", src, tmp_path / "out.qcow2").rc == 0
    vdimg("convert", "-c", src, tmp_path / "out.vhd").assert_error(2, "compressed")
    assert not (tmp_path / "out.vhd").exists()
