"""Build hook: ship resources/ inside the package and install the desktop files.

All project metadata lives in pyproject.toml; this file only does what its
declarative form cannot:

* copy the runtime resources (icons, desktop entry, metainfo, MIME info) from the
  top-level ``resources/`` into the built package as ``vdgui/resources``, where
  :mod:`vdgui.gui.icons` finds them in an installed wheel or a PyInstaller bundle
  (an editable install keeps reading ``resources/`` of the checkout);
* install the freedesktop files as wheel data under ``share/`` (the prefix of the
  installation: ``~/.local/share`` for ``pip install --user``), so that desktops
  find the application, its icon and the disk image MIME types.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
RESOURCES = "resources"
APP_ID = "io.github.vdgui.vdgui"
#: What the application reads at run time (render.py and screenshots are not).
RUNTIME_PATTERNS = ("*.svg", "*.png", "*.desktop", "*.xml")
RUNTIME_EXCLUDE = ("screenshots",)


def runtime_resources() -> list[Path]:
    """The files of resources/ to ship, relative to it."""
    root = HERE / RESOURCES
    found = {path.relative_to(root) for pattern in RUNTIME_PATTERNS
             for path in root.rglob(pattern)}
    return sorted(p for p in found if p.parts[0] not in RUNTIME_EXCLUDE)


def desktop_data_files() -> list[tuple[str, list[str]]]:
    """``(share/... folder, [files])`` pairs: the freedesktop installation layout."""
    icons = sorted((HERE / RESOURCES / "icons" / "hicolor").glob(f"*/apps/{APP_ID}.*"))
    pairs = [
        ("share/applications", [f"{RESOURCES}/{APP_ID}.desktop"]),
        ("share/metainfo", [f"{RESOURCES}/{APP_ID}.metainfo.xml"]),
        ("share/mime/packages", [f"{RESOURCES}/{APP_ID}.mime.xml"]),
    ]
    for icon in icons:
        folder = icon.parent.relative_to(HERE / RESOURCES / "icons")
        pairs.append((f"share/icons/{folder.as_posix()}",
                      [icon.relative_to(HERE).as_posix()]))
    return pairs


class BuildPyWithResources(build_py):
    """``build_py`` that also copies the runtime resources into the package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's resources/ is found directly
        target = Path(self.build_lib) / "vdgui" / "resources"
        for relative in runtime_resources():
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(HERE / RESOURCES / relative, destination)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        target = Path(self.build_lib) / "vdgui" / "resources"
        return [*outputs, *(str(target / relative) for relative in runtime_resources())]


setup(cmdclass={"build_py": BuildPyWithResources}, data_files=desktop_data_files())
