"""Operations killed for real: the ``vdimg`` process gets SIGKILL just before its
N-th change to a file, for N spread over the whole operation.  Every image left
behind must open, read exactly the content it had before, and check without errors
(a leak is allowed: it costs space, not data).

``test_crash_safety.py`` cuts operations at every write inside one process; this
adds what only a real process death shows: no ``finally`` block runs, the kernel
drops the descriptors and locks, a journal may be left beside the image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import qemu
from vdgui.engine import Disk, OpenFlags, open_chain

MiB = 1 << 20
SIZE = 24 * MiB
ROOT = Path(__file__).resolve().parents[2]
EXT = {"VDI": "vdi", "QCOW2": "qcow2", "VHD": "vhd"}

#: name: (base format, top format or None, vdimg arguments for the image list)
CASES = {
    "merge qcow2 into vdi": ("VDI", "QCOW2", lambda paths: ["merge", paths[1]]),
    "merge qcow2 into qcow2": ("QCOW2", "QCOW2", lambda paths: ["merge", paths[1]]),
    "merge vhd into vdi backwards": ("VDI", "VHD",
                                     lambda paths: ["merge", "--from", "0", "--to", "1",
                                                    paths[1]]),
    "compact vdi": ("VDI", None, lambda paths: ["compact", paths[0]]),
    "compact qcow2": ("QCOW2", None, lambda paths: ["compact", paths[0]]),
    "resize vhd": ("VHD", None, lambda paths: ["resize", paths[0], str(2 * SIZE)]),
}

#: Kill points per case in ``make test`` (``make stress`` kills at every change).
KILL_POINTS = 6


def build(folder: Path, base_fmt: str, top_fmt: str | None) -> list[Path]:
    """A base with data in every other MiB, a third of it overwritten with stored
    zeros (what compaction frees, moving the data after it), and optionally a
    differencing image above it rewriting part of that."""
    folder.mkdir()
    paths = [folder / f"base.{EXT[base_fmt]}"]
    pattern = os.urandom(MiB)
    with Disk() as disk:
        disk.create_base(paths[0], SIZE, base_fmt, open_flags=OpenFlags.HONOR_ZEROES)
        for index, offset in enumerate(range(0, SIZE, 2 * MiB)):
            disk.write(offset, index.to_bytes(4, "little") + pattern[4:])
        for offset in range(0, SIZE, 6 * MiB):
            disk.write(offset, bytes(MiB))
        if top_fmt is not None:
            paths.append(folder / f"top.{EXT[top_fmt]}")
            disk.create_diff(paths[1], top_fmt)
            disk.write(3 * MiB + 512, os.urandom(9 * MiB))
    return paths


def content(path: Path) -> bytes:
    with open_chain(path, OpenFlags.READONLY) as disk:
        return disk.read(0, SIZE)


def vdimg_killed_at(limit: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.ops.kill_child", str(limit), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def assert_sound(path: Path) -> None:
    """No error in ``vdimg check``; for QCOW2 none in qemu-img check either, once our
    engine has opened the image read/write (which completes a journal left behind)."""
    checked = subprocess.run([sys.executable, "-m", "vdgui.cli", "check", "--json", str(path)],
                             capture_output=True, text=True, timeout=120)
    report = json.loads(checked.stdout)
    assert not [p for p in report["problems"] if p["severity"] == "error"], report
    if path.suffix == ".qcow2" and qemu.have_qemu():
        with open_chain(path):
            pass
        assert qemu.check(path, "qcow2").returncode in (0, 3)  # 3: leaks only


def kill_and_check(tmp_path: Path, case: str, every: bool) -> None:
    """Kill ``case`` at every change to a file, or at KILL_POINTS of them spread from
    the first to the last, and check what is left each time."""
    base_fmt, top_fmt, command = CASES[case]
    pristine = build(tmp_path / "pristine", base_fmt, top_fmt)
    before = content(pristine[-1])

    def fresh(name: str) -> list[str]:
        folder = shutil.copytree(tmp_path / "pristine", tmp_path / name)
        return command([str(Path(folder) / path.name) for path in pristine])

    whole = vdimg_killed_at(0, fresh("whole"))
    assert whole.returncode == 0, whole.stderr
    changes = int(whole.stdout.rsplit("changes=", 1)[1])
    limits = range(1, changes + 1) if every else sorted(
        {1 + (changes - 1) * i // (KILL_POINTS - 1) for i in range(KILL_POINTS)})
    for limit in limits:
        args = fresh(f"killed-{limit}")
        assert vdimg_killed_at(limit, args).returncode == -9
        folder = tmp_path / f"killed-{limit}"
        left = [folder / path.name for path in pristine if (folder / path.name).exists()]
        assert left, f"killed at change {limit} of {changes}: every image is gone"
        assert content(left[-1]) == before, f"killed at change {limit} of {changes}"
        for path in left:
            assert_sound(path)


@pytest.mark.parametrize("case", list(CASES))
def test_killed_operation_loses_nothing(tmp_path: Path, case: str) -> None:
    kill_and_check(tmp_path, case, every=False)


@pytest.mark.stress
@pytest.mark.parametrize("case", list(CASES))
def test_killed_at_every_change_loses_nothing(tmp_path: Path, case: str) -> None:
    kill_and_check(tmp_path, case, every=True)
