"""Thin wrappers around qemu-img and qemu-io, the reference implementation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path


def have_qemu() -> bool:
    return bool(shutil.which("qemu-img") and shutil.which("qemu-io"))


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=check)


def qemu_img(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("qemu-img", *args, check=check)


def qemu_io(image: str | Path, fmt: str, *commands: str) -> None:
    """Run qemu-io commands (e.g. ``"write -P 0xab 0 64k"``) on an image."""
    args: list[str | Path] = ["qemu-io", "-f", fmt]
    for command in commands:
        args += ["-c", command]
    result = run(*args, image)
    if "error" in result.stdout.lower() or "failed" in result.stdout.lower():
        raise AssertionError(f"qemu-io failed: {result.stdout}")


def info(image: str | Path, fmt: str | None = None) -> dict:
    args = ["info", "--output=json"] + (["-f", fmt] if fmt else []) + [str(image)]
    return json.loads(qemu_img(*args).stdout)


def check(image: str | Path, fmt: str) -> subprocess.CompletedProcess[str]:
    """``qemu-img check``; returns the result (exit 0 means clean)."""
    return qemu_img("check", "-f", fmt, image, check=False)


def to_raw(image: str | Path, fmt: str, out: str | Path) -> bytes:
    """The virtual content of ``image`` as qemu reads it."""
    qemu_img("convert", "-f", fmt, "-O", "raw", image, out)
    return Path(out).read_bytes()


def compare(a: str | Path, fmt_a: str, b: str | Path, fmt_b: str) -> bool:
    result = qemu_img("compare", "-f", fmt_a, "-F", fmt_b, a, b, check=False)
    if result.returncode not in (0, 1):
        raise AssertionError(f"qemu-img compare failed: {result.stderr}")
    return result.returncode == 0
