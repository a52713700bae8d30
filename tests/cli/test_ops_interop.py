"""The operation subcommands against qemu-img: what they write passes ``qemu-img
check`` (where qemu can check the format) and reads identically in qemu."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import qemu
from vdgui.engine import backends

from .helpers import Runner, content, make_diff, make_image

pytestmark = pytest.mark.interop

MIB = 1 << 20

#: qemu's names where they differ from ours.
QEMU_NAMES = {"vhd": "vpc"}


def _targets() -> list[pytest.param]:
    """Every format that can create images, in each variant it can create."""
    params = []
    for info in backends():
        name = info.name.lower()
        variants = [v for v in info.variants if v != "rawdisk"]  # needs a real device
        variants = ["fixed,esx" if v == "esx" else v for v in variants]
        if {"fixed", "split2g"} <= set(variants):
            variants.append("fixed,split2g")
        for variant in variants:
            params.append(pytest.param(name, info.extensions[0][0], variant,
                                       id=f"{name}-{variant}"))
    return params


def qemu_check(image: Path, fmt: str) -> None:
    """``qemu-img check`` must pass, where qemu can check the format at all."""
    result = qemu.check(image, fmt)
    if result.returncode != 0:
        assert "does not support checks" in result.stderr, result.stdout + result.stderr


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    base = make_image(tmp_path / "base.vdi", size=6 * MIB,
                      data={0: b"\x11" * 4096, 3 * MIB + 17: b"tail data"})
    return make_diff(base, tmp_path / "top.vdi",
                     data={MIB: b"top" * 1000, 5 * MIB: b"\x22" * 512})


@pytest.mark.parametrize("fmt, ext, variant", _targets())
def test_convert_passes_qemu(vdimg: Runner, tmp_path: Path, chain: Path, fmt: str, ext: str,
                             variant: str) -> None:
    dst = tmp_path / f"out.{ext}"
    result = vdimg("convert", "-O", fmt, "-v", variant, chain, dst)
    assert result.rc == 0, result.err
    qemu_fmt = QEMU_NAMES.get(fmt, fmt)
    qemu_check(dst, qemu_fmt)
    reference = tmp_path / "ref.raw"
    reference.write_bytes(content(chain))
    assert qemu.compare(dst, qemu_fmt, reference, "raw")


def test_convert_qemu_chain(vdimg: Runner, tmp_path: Path) -> None:
    """A qcow2 chain written by qemu converts to what qemu itself reads."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu.qemu_img("create", "-f", "qcow2", base, "4M")
    qemu.qemu_io(base, "qcow2", "write -P 0x61 0 1M", "write -P 0x62 3M 64k")
    qemu.qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top)
    qemu.qemu_io(top, "qcow2", "write -P 0x63 512k 1M", "write -z 3M 4k")
    dst = tmp_path / "out.vdi"
    assert vdimg("convert", top, dst).rc == 0
    qemu_check(dst, "vdi")
    expected = qemu.to_raw(top, "qcow2", tmp_path / "ref.raw")
    assert qemu.compare(dst, "vdi", tmp_path / "ref.raw", "raw")
    assert content(dst) == expected


def test_merge_compact_resize_discard_pass_qemu(vdimg: Runner, chain: Path,
                                                tmp_path: Path) -> None:
    """After each operation the base VDI (qemu cannot open VDI diffs) passes
    ``qemu-img check`` and reads in qemu as in vdimg."""
    base = tmp_path / "base.vdi"
    reference = tmp_path / "ref.raw"

    def agree() -> None:
        qemu_check(base, "vdi")
        reference.write_bytes(content(base))
        assert qemu.compare(base, "vdi", reference, "raw")

    assert vdimg("merge", chain).rc == 0
    agree()
    assert vdimg("discard", base, "1M", "1M").rc == 0
    agree()
    assert vdimg("write", base, "2M", stdin=b"\x01" * MIB).rc == 0
    assert vdimg("write", base, "2M", stdin=bytes(MIB)).rc == 0  # an allocated zero block
    assert "1048576 (1.0 MiB) reclaimed" in vdimg("compact", base).text
    agree()
    assert vdimg("resize", base, "+3M").rc == 0
    agree()
    assert vdimg("resize", "--force", base, "3M").rc == 0
    agree()
