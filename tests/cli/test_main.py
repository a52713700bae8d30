"""The command as a whole: version, usage errors, exit statuses, error lines.

A few checks run the real ``python -m vdgui.cli`` process; the rest call main()
in-process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vdgui
from vdgui.cli.commands import info
from vdgui.engine import Disk

from .helpers import Runner, content, make_diff, make_image


def run_process(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vdgui.cli", *map(str, args)],
                          input=stdin, capture_output=True, timeout=60)


def assert_one_error_line(stderr: bytes, *needles: str) -> None:
    lines = stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vdimg: error: "), stderr
    for needle in needles:
        assert needle in lines[0]


# -- end to end, in a real process ---------------------------------------------------

def test_process_version() -> None:
    result = run_process("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"vdimg {vdgui.__version__}"


@pytest.mark.parametrize("kind", ["fifo", "character device", "directory"])
def test_process_refuses_what_is_no_image_file(tmp_path: Path, kind: str) -> None:
    """Not an image file: one clear error, and no wait for a FIFO's writer (a hang
    would fail the run's timeout)."""
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    else:
        path = Path("/dev/null") if kind == "character device" else tmp_path
    for args in (("info", path), ("check", path), ("read", path, "0", "1")):
        result = run_process(*args)
        assert result.returncode == 3
        assert_one_error_line(result.stderr, str(path), "not an image file")


def test_process_missing_file_is_one_line_exit_3(tmp_path: Path) -> None:
    missing = tmp_path / "missing.vdi"
    result = run_process("info", missing)
    assert result.returncode == 3
    assert_one_error_line(result.stderr, str(missing), "not found")
    assert result.stdout == b""


def test_process_usage_error_exit_2(tmp_path: Path) -> None:
    result = run_process("create", tmp_path / "x.vdi", "12 parsecs")
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "SIZE", "12 parsecs")
    assert not (tmp_path / "x.vdi").exists()


def test_process_create_write_read_compare(tmp_path: Path) -> None:
    image, other = tmp_path / "a.vdi", tmp_path / "b.vdi"
    assert run_process("create", image, "2M").returncode == 0
    assert run_process("create", other, "2M").returncode == 0
    payload = bytes(range(256)) * 9
    assert run_process("write", image, "1000", stdin=payload).returncode == 0
    result = run_process("read", image, "1000", str(len(payload)))
    assert result.returncode == 0 and result.stdout == payload
    result = run_process("compare", image, other)
    assert result.returncode == 1 and b"offset 1001" in result.stdout  # payload[0] is 0


def test_process_corrupt_image_no_traceback(tmp_path: Path) -> None:
    image = make_image(tmp_path / "bad.vdi")
    with open(image, "r+b") as f:
        f.seek(72)  # the header after the signature
        f.write(b"\xff" * 16)
    result = run_process("info", image)
    assert result.returncode == 3
    assert_one_error_line(result.stderr, str(image))
    result = run_process("--debug", "info", image)
    assert result.returncode == 3 and b"Traceback" in result.stderr


def test_process_convert_merge_compact_resize(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.vdi", data={0: b"\x01" * 5000})
    top = make_diff(base, tmp_path / "top.vdi", data={2 << 20: b"\x02" * 5000})
    expected = content(top)
    copy = tmp_path / "copy.qcow2"
    result = run_process("convert", top, copy)
    assert result.returncode == 0 and result.stderr == b""
    assert content(copy) == expected
    result = run_process("merge", top)
    assert result.returncode == 0 and not top.exists()
    assert content(base) == expected
    assert run_process("compact", base).returncode == 0
    assert run_process("resize", base, "+1M").returncode == 0
    assert content(base) == expected + bytes(1 << 20)


def test_process_operation_refusals_are_one_line(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data={3 << 20: b"end"})
    before = image.read_bytes()
    result = run_process("resize", image, "-1M")
    assert result.returncode == 2
    assert_one_error_line(result.stderr, str(image), "--shrink")
    result = run_process("resize", "--shrink", image, "-1M")
    assert result.returncode == 3
    assert_one_error_line(result.stderr, str(image), "offset")
    result = run_process("merge", image)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, str(image), "nothing to merge")
    assert image.read_bytes() == before


# -- in-process -----------------------------------------------------------------------

def test_no_command_is_usage_error(vdimg: Runner) -> None:
    vdimg().assert_error(2, "no command")


def test_unknown_command_one_line(vdimg: Runner) -> None:
    vdimg("frobnicate").assert_error(2, "frobnicate")


def test_help_exits_0(vdimg: Runner) -> None:
    result = vdimg("--help")
    assert result.rc == 0 and "compare" in result.text


def test_missing_argument_is_usage_error(vdimg: Runner) -> None:
    vdimg("read").assert_error(2)


def test_internal_error_is_one_line_without_traceback(
        vdimg: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path / "a.vdi")

    def broken(disk: object, n: int) -> dict:
        raise RuntimeError("boom")

    monkeypatch.setattr(info, "image_record", broken)
    vdimg("info", image).assert_error(3, "internal error", "boom", "--debug")
    result = vdimg("info", "--debug", image)
    assert result.rc == 3
    assert "Traceback" in result.err and "RuntimeError: boom" in result.err
    assert result.err.splitlines()[-1].startswith("vdimg: error: internal error")


def test_debug_before_the_command(vdimg: Runner, tmp_path: Path) -> None:
    result = vdimg("--debug", "info", tmp_path / "none.vdi")
    assert result.rc == 3 and "Traceback" in result.err


def test_keyboard_interrupt_is_one_line_exit_3(
        vdimg: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path / "a.vdi")

    def interrupted(disk: object, n: int) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "image_record", interrupted)
    vdimg("info", image).assert_error(3, str(image), "interrupted")


def test_broken_pipe_is_quiet(vdimg: Runner, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path / "a.vdi")

    def gone(disk: object, n: int) -> dict:
        raise BrokenPipeError

    monkeypatch.setattr(info, "image_record", gone)
    result = vdimg("info", image)
    assert result.rc == 0 and result.err == ""


def test_logging_only_with_debug(vdimg: Runner, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path / "a.vdi")
    original = info.image_record
    handled: list[bool] = []

    def noisy(disk: Disk, n: int) -> dict:
        logger = logging.getLogger("vdgui.engine.container")
        # Without a handler of our own, Python would print warnings on stderr.
        handled.append(any(logging.getLogger("vdgui").handlers))
        logger.warning("a warning")
        return original(disk, n)

    monkeypatch.setattr(info, "image_record", noisy)
    result = vdimg("info", image)
    assert result.rc == 0 and result.err == "" and handled == [True]
    result = vdimg("info", "--debug", image)
    assert result.rc == 0 and "a warning" in result.err
    assert not logging.getLogger("vdgui").handlers  # removed again after the run
