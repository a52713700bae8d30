"""Benchmarks: vdimg against qemu-img on the same files, in the same run.

Each case times a vdimg command and the matching qemu-img command on identical
inputs and prints both times, their ratio (vdimg / qemu-img: below 1 is faster)
and each side's peak memory.  Inputs are images of ``--size`` (default 2 GiB)
with half of their blocks holding data, built once per run in ``--dir``.
vdgui's bytecode is compiled first, as installing it does, so that no timed run
spends its start compiling modules (PYTHONDONTWRITEBYTECODE would otherwise make
every run do so).

    .venv/bin/python bench/run.py [--size 2G] [--dir /tmp/vdgui-bench] [--only NAME]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import vdgui
from vdgui.engine import Disk, parse_size

MiB = 1 << 20
GNU_TIME = "/usr/bin/time"  # Debian package "time"
VDIMG = [sys.executable, "-m", "vdgui.cli"]


@dataclass
class Timing:
    seconds: float
    peak_mib: float


def compile_bytecode() -> None:
    """Write the bytecode of the vdgui package the timed commands run."""
    if not compileall.compile_dir(os.path.dirname(vdgui.__file__), quiet=1):
        raise SystemExit("compiling vdgui failed")


def timed(command: list[str]) -> Timing:
    """Run ``command`` and measure its wall time and peak resident memory.

    Earlier writes (the inputs, the other tool's output) are flushed first, so that
    their write-back does not land in the timed run.  The peak is measured by GNU
    time: a child forked from this (large) process would report at least this
    process's size, since Linux carries the forking process's peak across exec.
    """
    os.sync()
    with tempfile.NamedTemporaryFile("r") as peak:
        start = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", peak.name, *command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if proc.returncode not in (0, 1):  # compare exits 1 on a difference
            raise SystemExit(f"failed: {' '.join(command)}\n{proc.stderr.decode()}")
        kib = int(peak.read().split()[-1])
    return Timing(elapsed, kib / 1024)


def fill_half(path: Path, size: int, backend: str) -> None:
    """A dynamic image with data in every other 2 MiB stretch (half the blocks of
    every format's default block size)."""
    stretch = 2 * MiB
    rng = os.urandom(stretch)  # incompressible data, reused with a per-stretch prefix
    with Disk() as disk:
        disk.create_base(path, size, backend)
        for index, offset in enumerate(range(0, size, 2 * stretch)):
            block = index.to_bytes(8, "little") + rng[8:]
            disk.write(offset, block[:min(stretch, size - offset)])


def qemu_convert(src: Path, src_fmt: str, dst: Path, dst_fmt: str) -> Timing:
    return timed(["qemu-img", "convert", "-f", src_fmt, "-O", dst_fmt, str(src), str(dst)])


def vdimg(*args: str | Path) -> Timing:
    return timed([*VDIMG, *map(str, args)])


def remove(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            path.unlink()


def make_inputs(folder: Path, size: int) -> dict[str, Path]:
    inputs = {"vdi": folder / "src.vdi", "qcow2": folder / "src.qcow2",
              "vhd": folder / "src.vhd"}
    remove(*inputs.values())  # a reused --dir: build them afresh
    fill_half(inputs["vdi"], size, "VDI")
    subprocess.run(["qemu-img", "convert", "-f", "vdi", "-O", "qcow2", inputs["vdi"],
                    inputs["qcow2"]], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "vdi", "-O", "vpc", inputs["vdi"],
                    inputs["vhd"]], check=True)
    return inputs


def case_convert(src: Path, src_fmt: str, dst_ext: str, dst_fmt: str,
                 folder: Path) -> tuple[Timing, Timing]:
    ours, theirs = folder / f"ours.{dst_ext}", folder / f"theirs.{dst_ext}"
    remove(ours, theirs)
    result = vdimg("convert", "-O", dst_ext, src, ours), qemu_convert(src, src_fmt, theirs,
                                                                        dst_fmt)
    remove(ours, theirs)
    return result


def case_compare(inputs: dict[str, Path]) -> tuple[Timing, Timing]:
    """Identical content in two formats: both tools must read everything."""
    return (vdimg("compare", inputs["vdi"], inputs["qcow2"]),
            timed(["qemu-img", "compare", "-f", "vdi", "-F", "qcow2", str(inputs["vdi"]),
                   str(inputs["qcow2"])]))


def case_merge(inputs: dict[str, Path], folder: Path, size: int) -> tuple[Timing, Timing]:
    """Commit a qcow2 overlay holding a quarter of the disk into its base."""
    results = []
    for tool in ("vdimg", "qemu-img"):
        base, top = folder / f"m-base-{tool}.qcow2", folder / f"m-top-{tool}.qcow2"
        remove(base, top)
        shutil.copy(inputs["qcow2"], base)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F",
                        "qcow2", top], check=True, cwd=folder)
        commands = [c for offset in range(MiB, size, 4 * MiB)
                    for c in ("-c", f"write -P 0x5a {offset} 1M")]
        subprocess.run(["qemu-io", "-f", "qcow2", *commands, top], check=True,
                       stdout=subprocess.DEVNULL)
        if tool == "vdimg":
            results.append(vdimg("merge", top))
        else:
            results.append(timed(["qemu-img", "commit", "-f", "qcow2", str(top)]))
        remove(base, top)
    return results[0], results[1]


def case_compact(inputs: dict[str, Path], folder: Path) -> tuple[Timing, Timing]:
    """Compacting a VDI whose data blocks were partly zeroed: vdimg compacts in place,
    qemu-img's way is a converting copy."""
    results = []
    for tool in ("vdimg", "qemu-img"):
        image = folder / f"c-{tool}.vdi"
        remove(image)
        shutil.copy(inputs["vdi"], image)
        with Disk() as disk:
            disk.open(image)
            for offset in range(0, disk.size, 8 * MiB):
                disk.write(offset, bytes(2 * MiB))  # every other data stretch zeroed
        if tool == "vdimg":
            results.append(vdimg("compact", image))
        else:
            out = folder / "c-out.vdi"
            results.append(qemu_convert(image, "vdi", out, "vdi"))
            remove(out)
        remove(image)
    return results[0], results[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G", help="virtual size of the inputs")
    parser.add_argument("--dir", help="work folder (default: a temporary one)")
    parser.add_argument("--only", help="run only the case with this name")
    args = parser.parse_args()
    size = parse_size(args.size)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="vdgui-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
    print(f"building {size // MiB} MiB inputs in {folder} ...", flush=True)
    inputs = make_inputs(folder, size)
    cases = {
        "convert vdi->vmdk": lambda: case_convert(inputs["vdi"], "vdi", "vmdk", "vmdk",
                                                  folder),
        "convert qcow2->raw": lambda: case_convert(inputs["qcow2"], "qcow2", "raw", "raw",
                                                   folder),
        "convert vhd->vdi": lambda: case_convert(inputs["vhd"], "vpc", "vdi", "vdi",
                                                 folder),
        "merge (qcow2 commit)": lambda: case_merge(inputs, folder, size),
        "compact vdi": lambda: case_compact(inputs, folder),
        "compare vdi": lambda: case_compare(inputs),
    }
    print(f"{'case':24} {'vdimg s':>8} {'qemu s':>8} {'ratio':>6} {'vdimg MiB':>10} "
          f"{'qemu MiB':>9}")
    for name, run in cases.items():
        if args.only and args.only != name:
            continue
        ours, theirs = run()
        print(f"{name:24} {ours.seconds:8.2f} {theirs.seconds:8.2f} "
              f"{ours.seconds / theirs.seconds:6.2f} {ours.peak_mib:10.0f} "
              f"{theirs.peak_mib:9.0f}", flush=True)
    if not args.dir:
        shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
