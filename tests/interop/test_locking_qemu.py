"""vdgui and qemu announce writers with the same OFD byte locks, so neither
writes an image the other is writing."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests import qemu
from vdgui.engine import Disk, ImageFlags, OpenFlags, open_chain
from vdgui.engine import errors

pytestmark = pytest.mark.interop

MiB = 1 << 20


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "locked.vdi"
    with Disk() as disk:
        disk.create_base(path, 4 * MiB)
    return path


def test_qemu_refuses_an_image_we_are_writing(image):
    with open_chain(image) as disk:
        disk.write(0, b"x")
        result = qemu.qemu_img("info", "-f", "vdi", image, check=False)
        assert result.returncode != 0 and "lock" in result.stderr
        assert qemu.qemu_img("info", "-U", "-f", "vdi", image, check=False).returncode == 0
    assert qemu.qemu_img("info", "-f", "vdi", image).returncode == 0


def test_we_refuse_to_write_an_image_qemu_is_writing(image):
    # qemu-io keeps the image open read/write while it waits for commands.
    proc = subprocess.Popen(["qemu-io", "-f", "vdi", str(image)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with open_chain(image) as disk:
                if disk.is_read_only:
                    with pytest.raises(errors.ReadOnly, match="in use"):
                        disk.write(0, b"x")
                    break
            assert time.monotonic() < deadline, "qemu-io never locked the image"
            time.sleep(0.05)
    finally:
        proc.communicate(b"quit\n", timeout=10)


def test_shareable_writers_coexist_on_fixed_images(tmp_path, image):
    fixed = tmp_path / "fixed.vdi"
    with Disk() as disk:
        disk.create_base(fixed, 4 * MiB, image_flags=ImageFlags.FIXED)
    with open_chain(fixed, OpenFlags.SHAREABLE) as first, \
            open_chain(fixed, OpenFlags.SHAREABLE) as second:
        assert not first.is_read_only and not second.is_read_only
        first.write(0, b"a")
        second.write(512, b"b")
        assert first.read(512, 1) == b"b"
    # A growing image shared by two writers would allocate the same space twice.
    with pytest.raises(errors.InvalidType, match="fixed"):
        open_chain(image, OpenFlags.SHAREABLE)
