"""``vdimg`` against qemu-img/qemu-io on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import qemu

from .helpers import Runner

pytestmark = pytest.mark.interop

MIB = 1 << 20


def test_qemu_written_vdi_reads_identically(vdimg: Runner, tmp_path: Path) -> None:
    image = tmp_path / "q.vdi"
    qemu.qemu_img("create", "-f", "vdi", image, "6M")
    qemu.qemu_io(image, "vdi", "write -P 0xab 0 64k", "write -P 0x5c 1536k 1m",
                 "write -P 0x01 5119k 3k")
    expected = qemu.to_raw(image, "vdi", tmp_path / "q.raw")
    result = vdimg("read", image, "0", "6M")
    assert result.rc == 0, result.err
    assert result.out == expected
    assert vdimg("read", image, str(1536 * 1024 - 3), "10").out == expected[
        1536 * 1024 - 3:1536 * 1024 + 7]
    assert vdimg("compare", image, tmp_path / "q.raw").rc == 0
    record = json.loads(vdimg("info", "--json", image).out)
    assert record["virtual_size"] == qemu.info(image)["virtual-size"]


def test_vdimg_written_images_pass_qemu_check(vdimg: Runner, tmp_path: Path) -> None:
    base, diff = tmp_path / "base.vdi", tmp_path / "diff.vdi"
    fixed = tmp_path / "fixed.vdi"
    assert vdimg("create", base, "4M").rc == 0
    assert vdimg("create", "-v", "fixed", fixed, "4M").rc == 0
    payload = bytes(range(256)) * 4096  # 1 MiB
    assert vdimg("write", base, "12345", stdin=payload).rc == 0
    assert vdimg("write", fixed, "12345", stdin=payload).rc == 0
    assert vdimg("create", "--parent", base, diff).rc == 0
    assert vdimg("write", diff, "3M", stdin=b"\xee" * 4096).rc == 0
    for image in (base, fixed):  # qemu cannot open VDI differencing images
        assert qemu.check(image, "vdi").returncode == 0, image
    raw = qemu.to_raw(fixed, "vdi", tmp_path / "fixed.raw")
    assert raw[12345:12345 + len(payload)] == payload
    assert qemu.compare(base, "vdi", fixed, "vdi")
    # The diff's content through the chain equals what vdimg reads from it.
    ours = tmp_path / "ours.raw"
    ours.write_bytes(vdimg("read", diff, "0", "4M").out)
    assert vdimg("compare", diff, ours).rc == 0
    assert ours.read_bytes()[3 * MIB:3 * MIB + 4096] == b"\xee" * 4096
    assert ours.read_bytes()[:3 * MIB] == raw[:3 * MIB]
