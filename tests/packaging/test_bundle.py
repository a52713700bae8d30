"""The PyInstaller bundle: its programs start from the bundle, not from the checkout.

``make package`` builds the bundle and runs these tests on it (VDGUI_BUNDLE names
its folder).  Under ``make stress`` without VDGUI_BUNDLE, the bundle is built
into a temporary folder first (about a minute), which needs PyInstaller
(packaging/requirements.txt, installed by ``make package``).

The programs run from a temporary folder with a scrubbed environment, and the
bundle is checked to carry no ``.py`` sources of vdgui: what runs is what was
frozen into it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vdgui

from .helpers import APP_ID, ROOT, clean_env

pytestmark = pytest.mark.stress


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("VDGUI_BUNDLE"):
        folder = Path(os.environ["VDGUI_BUNDLE"])
        assert (folder / "vdgui").is_file(), f"VDGUI_BUNDLE={folder} holds no bundle"
        return folder
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed (make package installs it, builds the "
                    "bundle and runs these tests)")
    out = tmp_path_factory.mktemp("bundle")
    subprocess.run([sys.executable, str(ROOT / "packaging" / "build.py"), "--no-archive",
                    "--outdir", str(out / "dist"), "--workdir", str(out / "work")],
                   check=True, capture_output=True, text=True, timeout=1800)
    (folder,) = [p for p in (out / "dist").glob("vdgui-*-linux-*") if p.is_dir()]
    return folder


def run(program: Path, *args: str, cwd: Path, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(program), *args], cwd=cwd, env=clean_env(env),
                          capture_output=True, text=True, timeout=120)


def test_bundle_holds_no_sources_of_vdgui(bundle: Path):
    assert not list(bundle.rglob("vdgui/**/*.py"))
    resources = bundle / "_internal" / "vdgui" / "resources"
    assert (resources / f"{APP_ID}.desktop").is_file()
    assert (resources / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg").is_file()


def test_vdimg_from_the_bundle(bundle: Path, tmp_path: Path):
    result = run(bundle / "vdimg", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vdimg {vdgui.__version__}"
    assert run(bundle / "vdimg", "create", "disk.qcow2", "16M", cwd=tmp_path).returncode == 0
    info = run(bundle / "vdimg", "info", "disk.qcow2", cwd=tmp_path)
    assert info.returncode == 0 and "qcow2" in info.stdout, info.stderr
    if shutil.which("qemu-img"):
        check = subprocess.run(["qemu-img", "check", str(tmp_path / "disk.qcow2")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_bundle_carries_the_optional_codecs(bundle: Path, tmp_path: Path):
    # zstd-compressed QCOW2 clusters need the `codecs` extra's zstandard.
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is not installed")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(range(256)) * 4096 + bytes(1 << 20))
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
                    "compression_type=zstd", str(raw), str(tmp_path / "zstd.qcow2")], check=True)
    result = run(bundle / "vdimg", "compare", "disk.raw", "zstd.qcow2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gui_smoke_test_from_the_bundle(bundle: Path, tmp_path: Path):
    result = run(bundle / "vdgui", "--smoke-test", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke test: ok" in result.stdout


def test_gui_smoke_test_on_an_x_server(bundle: Path, tmp_path: Path):
    # The xcb platform plugin and its libraries, as on a desktop.
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None:
        pytest.skip("xvfb-run is not installed (make test installs it)")
    env = clean_env()
    del env["QT_QPA_PLATFORM"]
    result = subprocess.run([xvfb_run, "-a", str(bundle / "vdgui"), "--smoke-test"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke test: ok" in result.stdout and "Qt platform xcb" in result.stdout


def test_gui_reads_its_own_resources_and_nothing_of_the_checkout(bundle: Path, tmp_path: Path):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    trace = tmp_path / "trace"
    # No icon theme: the application's own icons are the ones it must load.
    result = run(Path(strace), "-f", "-qq", "-e", "trace=openat,open,stat,newfstatat",
                 "-o", str(trace), str(bundle / "vdgui"), "--smoke-test", cwd=tmp_path,
                 env={"XDG_DATA_DIRS": str(tmp_path / "none")})
    assert result.returncode == 0, result.stdout + result.stderr
    text = trace.read_text()
    assert str(ROOT / "vdgui") not in text and str(ROOT / "resources") not in text
    icon = bundle / "_internal" / "vdgui" / "resources" / "icons"
    assert f'"{icon}/hicolor/256x256/apps/{APP_ID}.png", O_RDONLY' in text


def test_qt_plugins_the_application_needs_are_bundled(bundle: Path):
    plugins = bundle / "_internal" / "PySide6" / "Qt" / "plugins"
    for plugin in ("platforms/libqxcb.so", "platforms/libqwayland.so",
                   "platforms/libqoffscreen.so", "iconengines/libqsvgicon.so",
                   "imageformats/libqsvg.so"):
        assert (plugins / plugin).is_file(), plugin
    # Left out on purpose (packaging/vdgui.spec): it would load the system's GTK.
    assert not (plugins / "platformthemes" / "libqgtk3.so").exists()


def test_install_script_links_the_programs_and_installs_the_desktop_files(bundle: Path,
                                                                          tmp_path: Path):
    prefix = tmp_path / "prefix"
    result = subprocess.run(["sh", str(bundle / "install.sh")], capture_output=True, text=True,
                            env=clean_env({"PREFIX": str(prefix), "HOME": str(tmp_path)}))
    assert result.returncode == 0, result.stdout + result.stderr
    version = run(prefix / "bin" / "vdimg", "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"vdimg {vdgui.__version__}", version.stderr
    desktop = prefix / "share" / "applications" / f"{APP_ID}.desktop"
    assert f"Exec={prefix}/bin/vdgui %F" in desktop.read_text()
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(desktop)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    for path in (f"share/metainfo/{APP_ID}.metainfo.xml",
                 f"share/mime/packages/{APP_ID}.mime.xml",
                 f"share/icons/hicolor/256x256/apps/{APP_ID}.png",
                 f"share/icons/hicolor/scalable/apps/{APP_ID}.svg"):
        assert (prefix / path).is_file(), path
    if shutil.which("update-mime-database"):
        assert (prefix / "share" / "mime" / "application" / "x-parallels-disk.xml").is_file()
