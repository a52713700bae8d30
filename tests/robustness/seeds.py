"""Small valid images of every format, the starting points for hostile mutations.

Each seed is ``(files, top)``: file contents by path, and the image to open.  They
are made by the engine itself (every format it can create, as a base and, where
the format allows, with a differencing image on top) and, when qemu-img is
installed, by qemu-img too; DMG and ISO images come from builders in the tests.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

from tests.qemu import have_qemu
from vdgui.engine import Disk, ImageFlags, backends
from vdgui.engine.io import MemoryProvider
from vdgui.engine.types import Capability

MiB = 1 << 20
SIZE = 2 * MiB + 512 * 7

Seed = tuple[dict[str, bytes], str]

#: qemu-img format names and create options worth seeding from.
QEMU_SEEDS = {
    "qcow2": ["-o", "cluster_size=4096"], "qcow": [], "qed": ["-o", "cluster_size=4096"],
    "vpc": [], "vmdk": [], "vhdx": [], "parallels": [], "vdi": [],
}


def _fill(disk: Disk) -> None:
    size = disk.size
    for offset, byte in ((0, 1), (MiB - 1024, 2), (size - 4096, 3)):
        disk.write(offset, bytes([byte]) * 3000 if offset + 3000 <= size else bytes([byte]))


def _ours() -> dict[str, Seed]:
    seeds: dict[str, Seed] = {}
    for info in backends():
        if not info.has(Capability.CREATE_DYNAMIC) and not info.has(Capability.CREATE_FIXED):
            continue
        ext = info.extensions[0][0]
        flags = ImageFlags.NONE if info.has(Capability.CREATE_DYNAMIC) else ImageFlags.FIXED
        io = MemoryProvider()
        base = f"/seed/base.{ext}"
        with Disk(io=io) as disk:
            disk.create_base(base, SIZE, info.name, flags)
            _fill(disk)
        seeds[f"{info.name.lower()}"] = ({base: io.get(base)}, base)
        if info.has(Capability.DIFF):
            io = MemoryProvider()
            with Disk(io=io) as disk:
                disk.create_base(base, SIZE, info.name)
                _fill(disk)
                disk.create_diff(f"/seed/diff.{ext}", info.name)
                disk.write(MiB + 100, b"\x09" * 5000)
            files = {path: io.get(path) for path in io.files}
            seeds[f"{info.name.lower()}-diff"] = (files, f"/seed/diff.{ext}")
    return seeds


def _qemu() -> dict[str, Seed]:
    seeds: dict[str, Seed] = {}
    if not have_qemu():
        return seeds
    with tempfile.TemporaryDirectory() as folder:
        for fmt, options in QEMU_SEEDS.items():
            path = Path(folder) / f"q.{fmt}"
            created = subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *options,
                                      str(path), str(SIZE)], capture_output=True)
            if created.returncode:
                continue
            subprocess.run(["qemu-io", "-f", fmt, "-c", "write -P 0x11 0 4k",
                            "-c", f"write -P 0x22 {MiB} 64k", str(path)],
                           capture_output=True)
            ext = "vhd" if fmt == "vpc" else "hdd" if fmt == "parallels" else fmt
            name = f"/seed/qemu.{ext}"
            seeds[f"qemu-{fmt}"] = ({name: path.read_bytes()}, name)
    return seeds


def _built() -> dict[str, Seed]:
    from tests.formats.dmg.builder import build, every_kind
    from tests.formats.raw.test_raw import make_iso
    seeds: dict[str, Seed] = {}
    with tempfile.TemporaryDirectory() as folder:
        iso, dmg = Path(folder) / "disc.iso", Path(folder) / "disk.dmg"
        make_iso(iso)
        build(dmg, every_kind())
        seeds["iso"] = ({"/seed/disc.iso": iso.read_bytes()}, "/seed/disc.iso")
        seeds["dmg"] = ({"/seed/disk.dmg": dmg.read_bytes()}, "/seed/disk.dmg")
    return seeds


@functools.cache
def all_seeds() -> dict[str, Seed]:
    return {**_ours(), **_qemu(), **_built()}
