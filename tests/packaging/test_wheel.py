"""The sdist and the wheel, built with ``python -m build``, installed into clean venvs.

Two environments get the wheel (see helpers.py for how their dependencies come in):

* ``engine_venv`` without PySide6 and qasync: ``vdimg`` and the engine work there,
  and the README's engine example runs there -- the engine needs no Qt;
* ``full_venv`` with every dependency: the ``vdgui`` entry point passes its smoke
  test and the application finds its icons inside the installed package.

Every program runs from a temporary folder with a scrubbed environment, and the
tests check that ``vdgui`` was imported from the environment, not the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import vdgui

from .helpers import (
    APP_ID,
    GUI_ONLY,
    RESOURCES,
    ROOT,
    Venv,
    build_distributions,
    canonical,
    clean_env,
    make_venv,
    readme_example,
    requirements,
)

RUNTIME_SUFFIXES = {".svg", ".png", ".desktop", ".xml"}
SHARE_FILES = {
    f"share/applications/{APP_ID}.desktop",
    f"share/metainfo/{APP_ID}.metainfo.xml",
    f"share/mime/packages/{APP_ID}.mime.xml",
    f"share/icons/hicolor/scalable/apps/{APP_ID}.svg",
    *(f"share/icons/hicolor/{n}x{n}/apps/{APP_ID}.png" for n in (16, 24, 32, 48, 64, 128, 256)),
}


def runtime_resources() -> set[str]:
    """resources/ files the application may read at run time (not scripts, screenshots)."""
    return {p.relative_to(RESOURCES).as_posix() for p in RESOURCES.rglob("*")
            if p.is_file() and p.suffix in RUNTIME_SUFFIXES
            and p.relative_to(RESOURCES).parts[0] != "screenshots"}


@pytest.fixture(scope="session")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_distributions(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def wheel(distributions: tuple[Path, Path]) -> Path:
    return distributions[1]


def _dependencies(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    return {canonical(r.name) for r in requirements(metadata=metadata)}


@pytest.fixture(scope="session")
def engine_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    return make_venv(tmp_path_factory.mktemp("engine") / "venv", wheel,
                     _dependencies(wheel) - GUI_ONLY)


@pytest.fixture(scope="session")
def full_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    return make_venv(tmp_path_factory.mktemp("full") / "venv", wheel, _dependencies(wheel))


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# -- the distributions ------------------------------------------------------------------


def test_sdist_holds_what_the_wheel_is_built_from(distributions: tuple[Path, Path]):
    sdist, _ = distributions
    with tarfile.open(sdist) as archive:
        top = sdist.name.removesuffix(".tar.gz")
        names = {n.removeprefix(top + "/") for n in archive.getnames()}
    assert {"pyproject.toml", "setup.py", "MANIFEST.in", "README.md",
            "vdgui/__init__.py", "vdgui/engine/__init__.py"} <= names
    assert {f"resources/{r}" for r in runtime_resources()} <= names
    assert not any(n.startswith("resources/screenshots") for n in names)


def test_wheel_carries_the_resources_the_data_files_and_the_entry_points(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert {f"vdgui/resources/{r}" for r in runtime_resources()} <= names
    data = f"vdgui-{vdgui.__version__}.data/data/"
    assert {data + f for f in SHARE_FILES} <= names
    assert "vdimg = vdgui.cli.main:main" in scripts
    assert "vdgui = vdgui.gui.app:main" in scripts
    assert not any("render.py" in n or "screenshots" in n for n in names)


def test_wheel_metadata_declares_the_dependencies_the_project_declares(wheel: Path):
    # The clean environments link these in; the wheel must ask pip for the same.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonical(Requirement(r).name) for r in project["dependencies"]}
    assert _dependencies(wheel) == declared
    assert GUI_ONLY <= declared


# -- vdimg and the engine, without Qt --------------------------------------------------------


def test_engine_environment_has_no_qt(engine_venv: Venv, tmp_path: Path):
    result = engine_venv.run(engine_venv.python, "-c", "import PySide6", cwd=tmp_path)
    assert result.returncode != 0 and "No module named 'PySide6'" in result.stderr


def test_vdimg_entry_point_works_without_qt(engine_venv: Venv, tmp_path: Path):
    assert _ok(engine_venv.run("vdimg", "--version", cwd=tmp_path)).strip() == \
        f"vdimg {vdgui.__version__}"
    _ok(engine_venv.run("vdimg", "create", "disk.vdi", "16M", cwd=tmp_path))
    info = dict(line.split(":", 1) for line in
                _ok(engine_venv.run("vdimg", "info", "disk.vdi", cwd=tmp_path)).splitlines())
    assert info["format"].strip() == "vdi"
    assert info["virtual_size"].split()[0] == str(16 << 20)


def test_engine_imports_from_the_installed_wheel_without_qt(engine_venv: Venv, tmp_path: Path):
    code = ("import sys, vdgui, vdgui.engine, vdgui.cli.main\n"
            "print(vdgui.__file__)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('PySide6', 'shiboken6', "
            "'qasync'))))\n")
    where, qt = _ok(engine_venv.run(engine_venv.python, "-c", code, cwd=tmp_path)).splitlines()
    assert Path(where).is_relative_to(engine_venv.site), where
    assert qt == "[]"


def test_readme_engine_example_runs_against_the_installed_wheel(engine_venv: Venv,
                                                                 tmp_path: Path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    _ok(engine_venv.run(engine_venv.python, script, cwd=tmp_path))
    assert (tmp_path / "flat.qcow2").is_file()
    if shutil.which("qemu-img"):
        _ok(subprocess.run(["qemu-img", "check", str(tmp_path / "flat.qcow2")],
                           capture_output=True, text=True))


# -- the desktop application ---------------------------------------------------------------


def test_vdgui_entry_point_passes_its_smoke_test(full_venv: Venv, tmp_path: Path):
    out = _ok(full_venv.run("vdgui", "--smoke-test", cwd=tmp_path))
    assert "smoke test: ok" in out


def test_installed_application_finds_its_icons_in_the_package(full_venv: Venv, tmp_path: Path):
    code = (
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from vdgui.gui import icons\n"
        "print(icons.RESOURCES)\n"
        "sizes = sorted(s.width() for s in icons.app_icon().availableSizes())\n"
        "print(sizes)\n"
        # No theme offers "new-diff": it is the package's SVG, drawn by Qt's SVG engine.
        "print(icons.icon('new-diff').pixmap(32, 32).isNull())\n")
    where, sizes, null = _ok(full_venv.run(full_venv.python, "-c", code, cwd=tmp_path,
                                           env={"XDG_DATA_DIRS": str(tmp_path)})).splitlines()
    assert Path(where) == full_venv.site / "vdgui" / "resources"
    assert sizes == "[16, 24, 32, 48, 64, 128, 256]"
    assert null == "False"


def test_wheel_installs_the_desktop_files_under_share(full_venv: Venv):
    installed = {p.relative_to(full_venv.path).as_posix()
                 for p in (full_venv.path / "share").rglob("*") if p.is_file()}
    assert SHARE_FILES <= installed
    appstreamcli = shutil.which("appstreamcli")
    if appstreamcli:
        # The installed tree as a software centre reads it: metainfo, desktop entry, icons.
        _ok(subprocess.run([appstreamcli, "validate-tree", "--no-net", "--pedantic",
                            str(full_venv.path)], capture_output=True, text=True))


# -- a user's installation, dependencies and all (slow: downloads PySide6) --------------------


@pytest.mark.stress
def test_pip_resolves_the_wheels_dependencies(wheel: Path, tmp_path: Path):
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    venv = Venv(tmp_path / "venv")
    _ok(subprocess.run([str(venv.python), "-m", "pip", "install", "--quiet", str(wheel)],
                       capture_output=True, text=True, timeout=1200, env=clean_env()))
    assert _ok(venv.run("vdimg", "--version", cwd=tmp_path)).strip() == \
        f"vdimg {vdgui.__version__}"
    assert "smoke test: ok" in _ok(venv.run("vdgui", "--smoke-test", cwd=tmp_path))
    assert ROOT not in Path(_ok(venv.run(venv.python, "-c", "import vdgui; print(vdgui.__file__)",
                                         cwd=tmp_path)).strip()).parents
