"""Build vdgui's distributions: the sdist, the wheel and the Linux bundle.

    .venv/bin/python packaging/build.py        (what `make package` runs)

1. ``python -m build``: ``dist/vdgui-VERSION.tar.gz`` and the wheel.
2. The wheel is installed into a scratch folder and PyInstaller bundles that copy
   (packaging/vdgui.spec), so the bundle holds exactly what the wheel installs.
3. The bundle folder gets the wheel's freedesktop files (``share/``) and
   ``install.sh``, and is packed as ``dist/vdgui-VERSION-linux-ARCH.tar.gz``.

Prints where everything went, the bundle's size and how long each step took.
"""

from __future__ import annotations

import argparse
import ast
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def version() -> str:
    """vdgui's version as the wheel spells it (the attribute pyproject.toml names)."""
    from packaging.version import Version  # the build front end depends on it

    tree = ast.parse((ROOT / "vdgui" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__":
            return str(Version(ast.literal_eval(node.value)))
    raise SystemExit("vdgui/__init__.py sets no __version__")


def bundle_folder(outdir: Path) -> Path:
    return outdir / f"vdgui-{version()}-linux-{platform.machine()}"


def run(*command: str | Path) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], check=True, cwd=ROOT)


def build_sdist_and_wheel(outdir: Path) -> Path:
    """Build both with the standard front end; the path of the new wheel."""
    for old in outdir.glob("vdgui-*.whl"):
        old.unlink()
    run(sys.executable, "-m", "build", "--outdir", outdir, ROOT)
    (wheel,) = outdir.glob("vdgui-*.whl")
    return wheel


def extract_share(wheel: Path, destination: Path) -> None:
    """The wheel's data files: ``destination/share/...`` (desktop entry, icons, ...)."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            parts = Path(name).parts
            # <name>-<version>.data/data/share/...
            if len(parts) > 3 and parts[0].endswith(".data") and parts[1:3] == ("data", "share"):
                target = destination.joinpath(*parts[2:])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))


def build_bundle(wheel: Path, workdir: Path, outdir: Path) -> Path:
    """The bundle folder ``outdir/vdgui-VERSION-linux-ARCH``, built from ``wheel``."""
    site = workdir / "site"
    shutil.rmtree(site, ignore_errors=True)
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
        "--target", site, wheel)
    run(sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
        "--distpath", workdir / "dist", "--workpath", workdir / "work",
        HERE / "vdgui.spec", "--", "--site", site)
    bundle = bundle_folder(outdir)
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.move(workdir / "dist" / "vdgui", bundle)
    extract_share(wheel, bundle)
    shutil.copy2(HERE / "install.sh", bundle / "install.sh")
    return bundle


def pack(bundle: Path) -> Path:
    archive = bundle.with_name(bundle.name + ".tar.gz")
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        tar.add(bundle, arcname=bundle.name)
    return archive


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outdir", type=Path, default=ROOT / "dist",
                        help="where the distributions go (default: dist/)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "package",
                        help="scratch folder (default: build/package/)")
    parser.add_argument("--no-archive", action="store_true",
                        help="leave the bundle as a folder, do not pack it")
    parser.add_argument("--print-bundle", action="store_true",
                        help="only print the bundle folder that a build makes")
    args = parser.parse_args(argv)
    outdir, workdir = args.outdir.resolve(), args.workdir.resolve()
    if args.print_bundle:
        print(bundle_folder(outdir))
        return 0
    outdir.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)

    times: list[tuple[str, float]] = []
    start = time.monotonic()
    wheel = build_sdist_and_wheel(outdir)
    times.append(("sdist and wheel", time.monotonic() - start))
    start = time.monotonic()
    bundle = build_bundle(wheel, workdir, outdir)
    times.append(("bundle", time.monotonic() - start))
    archive = None
    if not args.no_archive:
        start = time.monotonic()
        archive = pack(bundle)
        times.append(("archive", time.monotonic() - start))

    print(f"\nwheel:  {wheel}\nbundle: {bundle} ({size_of(bundle) / 2**20:.0f} MiB)")
    if archive is not None:
        print(f"archive: {archive} ({archive.stat().st_size / 2**20:.0f} MiB)")
    print("time: " + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
