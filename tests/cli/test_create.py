"""``vdimg create``: base and differencing images, defaults, and refusals."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from vdgui.cli import progress as cli_progress
from vdgui.engine import OpenFlags, backends, open_chain

from .helpers import Runner, content, make_image


def info_json(vdimg: Runner, path: Path, *extra: str) -> dict:
    result = vdimg("info", "--json", *extra, path)
    assert result.rc == 0, result.err
    return json.loads(result.out)


def test_create_dynamic_vdi_default(vdimg: Runner, tmp_path: Path) -> None:
    image = tmp_path / "disk.vdi"
    result = vdimg("create", image, "10M")
    assert result.rc == 0, result.err
    assert str(image) in result.text and "10485760" in result.text
    record = info_json(vdimg, image)
    assert record["format"] == "vdi" and record["variant"] == ["standard"]
    assert record["virtual_size"] == 10 << 20
    assert record["file_size"] < 10 << 20


def test_format_from_extension_else_vdi(vdimg: Runner, tmp_path: Path) -> None:
    assert vdimg("create", tmp_path / "a.raw", "1M").rc == 0
    assert info_json(vdimg, tmp_path / "a.raw")["format"] == "raw"
    assert vdimg("create", tmp_path / "b.disk", "1M").rc == 0
    assert info_json(vdimg, tmp_path / "b.disk")["format"] == "vdi"


def test_size_rounded_up_to_sector(vdimg: Runner, tmp_path: Path) -> None:
    image = tmp_path / "r.raw"
    assert vdimg("create", image, "1000001").rc == 0
    assert image.stat().st_size == 1000448  # next multiple of 512
    assert vdimg("create", tmp_path / "r.vdi", "1.5M").rc == 0
    assert info_json(vdimg, tmp_path / "r.vdi")["virtual_size"] == 3 << 19


def test_fixed_with_metadata(vdimg: Runner, tmp_path: Path) -> None:
    image = tmp_path / "f.vdi"
    wanted = uuid.uuid4()
    result = vdimg("create", "-f", "VDI", "-v", "fixed", "--comment", "a note",
                   "--uuid", str(wanted), "--lchs", "100/16/63", "--type", "hdd", image, "2M")
    assert result.rc == 0, result.err
    record = info_json(vdimg, image)
    assert record["variant"] == ["fixed"] and record["comment"] == "a note"
    assert record["uuid"] == str(wanted)
    assert record["lchs"]["heads"] == 16 and record["lchs"]["sectors"] == 63
    assert record["file_size"] >= 2 << 20


def test_option_passed_to_backend(vdimg: Runner, tmp_path: Path) -> None:
    image = tmp_path / "o.vdi"
    assert vdimg("create", "-o", "AllocationBlockSize=2M", image, "8M").rc == 0
    assert "block size: 2097152" in vdimg("dump", image).text


@pytest.mark.parametrize("args, needles", [
    (["-f", "nosuchformat"], ["unknown format", "nosuchformat"]),
    (["-v", "wobbly"], ["unknown variant", "wobbly"]),
    (["-f", "raw", "-v", "standard"], ["raw", "standard", "fixed"]),
    (["-v", "stream"], ["vdi", "stream", "standard, fixed, zero-expand"]),
    (["--pchs", "1/2"], ["C/H/S"]),
    (["--lchs", "10/300/63"], ["255 heads"]),
    (["--uuid", "not-a-uuid"], ["not-a-uuid"]),
    (["--type", "tape"], ["tape"]),
    (["-o", "novalue"], ["KEY=VALUE"]),
    (["-o", "Colour=blue"], ["Colour", "AllocationBlockSize"]),
])
def test_usage_errors_exit_2(vdimg: Runner, tmp_path: Path, args: list[str],
                             needles: list[str]) -> None:
    image = tmp_path / "u.vdi"
    vdimg("create", *args, image, "2M").assert_error(2, *needles)
    assert not image.exists()


@pytest.mark.parametrize("size", ["0", "-5", "ten", "1X"])
def test_bad_size(vdimg: Runner, tmp_path: Path, size: str) -> None:
    vdimg("create", tmp_path / "s.vdi", size).assert_error(2)
    assert not (tmp_path / "s.vdi").exists()


def test_size_the_format_refuses(vdimg: Runner, tmp_path: Path) -> None:
    vdimg("create", tmp_path / "tiny.vdi", "64K").assert_error(2, "tiny.vdi")


def test_missing_size(vdimg: Runner, tmp_path: Path) -> None:
    vdimg("create", tmp_path / "n.vdi").assert_error(2, "SIZE")


def test_existing_file_untouched(vdimg: Runner, tmp_path: Path) -> None:
    image = tmp_path / "exists.vdi"
    image.write_bytes(b"precious")
    vdimg("create", image, "2M").assert_error(3, str(image), "exists")
    assert image.read_bytes() == b"precious"


def test_every_backend_variant_is_offered(vdimg: Runner, tmp_path: Path) -> None:
    """The supported-variants message comes from the registry, not a fixed list."""
    for info in backends():
        if "zero-expand" in info.variants:
            continue
        result = vdimg("create", "-f", info.name, "-v", "zero-expand", tmp_path / "z", "2M")
        result.assert_error(2, *info.variants)


def test_diff_defaults_to_parent_format(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi", data={0: b"base"})
    diff = tmp_path / "child.img"  # the extension would say raw
    result = vdimg("create", "--parent", base, diff)
    assert result.rc == 0, result.err
    record = info_json(vdimg, diff, "--chain")
    assert record["format"] == "vdi"
    assert [r["path"] for r in record["chain"]][-1] == str(diff)
    assert record["parent_uuid"] == record["chain"][0]["uuid"]
    assert content(diff)[:4] == b"base"


def test_diff_of_raw_parent_uses_a_format_with_children(vdimg: Runner,
                                                         tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.raw", backend="RAW", size=1 << 20)
    diff = tmp_path / "top.qcow2"
    assert vdimg("create", "--parent", base, diff).rc == 0
    assert info_json(vdimg, diff)["format"] == "qcow2"
    # A VDI child finds its parent only by UUID, and a raw image has none.
    vdimg("create", "--parent", base, tmp_path / "top.vdi").assert_error(
        3, "top.vdi", "only by UUID")
    assert not (tmp_path / "top.vdi").exists()


def test_diff_with_comment_and_uuid(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    wanted = uuid.uuid4()
    diff = tmp_path / "d.vdi"
    assert vdimg("create", "--parent", base, "--comment", "snap", "--uuid", str(wanted),
                 diff).rc == 0
    record = info_json(vdimg, diff)
    assert record["uuid"] == str(wanted) and record["comment"] == "snap"


@pytest.mark.parametrize("extra", [["2M"], ["--pchs", "10/16/63"], ["--type", "dvd"]])
def test_diff_refuses_base_only_options(vdimg: Runner, tmp_path: Path,
                                        extra: list[str]) -> None:
    base = make_image(tmp_path / "base.vdi")
    vdimg("create", "--parent", base, *extra[:-1], tmp_path / "d.vdi",
          *extra[-1:]).assert_error(2)
    assert not (tmp_path / "d.vdi").exists()


def test_diff_fixed_refused(vdimg: Runner, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi")
    vdimg("create", "--parent", base, "-v", "fixed", tmp_path / "d.vdi").assert_error(2)


def test_diff_missing_parent(vdimg: Runner, tmp_path: Path) -> None:
    vdimg("create", "--parent", tmp_path / "nope.vdi", tmp_path / "d.vdi").assert_error(
        3, "nope.vdi")


def test_progress_bar_for_fixed(vdimg: Runner, tmp_path: Path) -> None:
    result = vdimg("create", "-v", "fixed", "--progress", tmp_path / "p.vdi", "3M")
    assert result.rc == 0
    assert "creating" in result.err and "100%" in result.err
    result = vdimg("create", "--progress", tmp_path / "q.vdi", "3M")
    assert result.err == ""  # dynamic images are quick: no bar


def test_ctrl_c_cancels_and_removes_the_file(vdimg: Runner, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def press_ctrl_c(self: cli_progress.ProgressBar, done: int, total: int,
                     stage: str) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli_progress.ProgressBar, "__call__", press_ctrl_c)
    image = tmp_path / "c.vdi"
    vdimg("create", "-v", "fixed", "--progress", image, "200M").assert_error(
        3, str(image), "cancelled")
    assert not image.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_created_image_opens_read_write(tmp_path: Path, vdimg: Runner) -> None:
    image = tmp_path / "rw.vdi"
    assert vdimg("create", image, "2M").rc == 0
    with open_chain(image, OpenFlags.NORMAL) as disk:
        disk.write(0, b"x" * 512)
