"""Read-only subcommands change no byte and no timestamp of any image."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdgui.engine import Disk, ImageFlags

from .helpers import Runner, make_diff, make_image, snapshot

COMMANDS = [
    ["info"], ["info", "--json"], ["info", "--chain"], ["info", "--chain", "--json"],
    ["map"], ["map", "--json"], ["dump"], ["read", "{top}", "0", "2M"],
    ["compare", "{top}", "{base}"], ["compare", "{top}", "{top}"], ["formats"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_no_change(vdimg: Runner, tmp_path: Path, command: list[str]) -> None:
    base = make_image(tmp_path / "base.vdi", data={0: b"base" * 1000})
    top = make_diff(base, tmp_path / "top.vdi", data={1 << 20: b"top" * 1000})
    before = snapshot(base, top)
    args = [a.format(top=top, base=base) for a in command]
    if not any("{" in a for a in command) and command != ["formats"]:
        args.append(str(top))
    result = vdimg(*args)
    assert result.rc in (0, 1), result.err
    assert snapshot(base, top) == before


@pytest.mark.parametrize("command", [["info"], ["map"], ["dump"], ["read", "0", "1M"]],
                         ids=" ".join)
def test_fixed_image_no_change(vdimg: Runner, tmp_path: Path, command: list[str]) -> None:
    fixed = make_image(tmp_path / "fixed.vdi", flags=ImageFlags.FIXED, size=1 << 20,
                       data={0: b"data"})
    before = snapshot(fixed)
    assert vdimg(command[0], fixed, *command[1:]).rc == 0
    assert snapshot(fixed) == before


def test_read_only_commands_work_while_image_is_written(vdimg: Runner,
                                                         tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi")
    with Disk() as holder:
        holder.open(image, "VDI")
        for command in (["info"], ["map"], ["dump"], ["read", str(image), "0", "1"]):
            args = command if len(command) > 1 else [*command, str(image)]
            assert vdimg(*args).rc == 0, command
