"""The direction of imports: the engine never reaches up into the GUI or the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vdgui.engine

ENGINE = Path(vdgui.engine.__file__).parent
FORBIDDEN = ("PySide6", "shiboken6", "qasync", "humanize", "vdgui.gui", "vdgui.cli")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_engine_sources_import_nothing_from_qt_gui_or_cli():
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for name in imported_modules(path):
            if name.startswith(FORBIDDEN):
                offenders.append(f"{path.relative_to(ENGINE)} imports {name}")
    assert not offenders


def test_importing_the_engine_loads_no_qt():
    code = ("import sys, vdgui.engine; "
            f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_backends_never_import_the_container():
    for path in (ENGINE / "formats").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.endswith(("container", "chain", "registry")), path
