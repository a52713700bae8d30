"""Helpers for the packaging tests: building the distributions, clean environments.

A "clean environment" is a new virtual environment (no system site-packages) into
which pip installs the wheel with ``--no-deps``; pip writes the ``vdgui`` and
``vdimg`` entry points and the data files from the wheel, exactly as for a user.
Its dependencies are not downloaded again (PySide6 alone is ~100 MB, minutes on a
2-core machine): their installed files are linked in from the test environment,
one distribution at a time, and only the ones asked for -- so an environment
without PySide6 really has no PySide6.  ``test_wheel_metadata_declares_...``
checks that the wheel declares them, and the stress test
``test_pip_resolves_the_wheels_dependencies`` lets pip resolve them from the index.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "resources"
APP_ID = "io.github.vdgui.vdgui"
DESKTOP = RESOURCES / f"{APP_ID}.desktop"
METAINFO = RESOURCES / f"{APP_ID}.metainfo.xml"
MIME_INFO = RESOURCES / f"{APP_ID}.mime.xml"
#: The dependencies only the desktop application needs.
GUI_ONLY = {"pyside6-essentials", "qasync"}
#: Where the lead merges /work/notes/readme-install.md; until then, that file.
README = ROOT / "README.md"
README_DRAFT = Path("/work/notes/readme-install.md")
EXAMPLE_HEADING = "## Use the engine from Python"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_distributions(outdir: Path) -> tuple[Path, Path]:
    """``python -m build`` (sdist, then the wheel from the sdist): their paths.

    Without build isolation: the backend comes from the test environment (the
    ``test`` extra), so this needs no network; ``make package`` builds isolated.
    """
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir),
                    str(ROOT)], check=True, capture_output=True, text=True)
    (sdist,) = outdir.glob("vdgui-*.tar.gz")
    (wheel,) = outdir.glob("vdgui-*.whl")
    return sdist, wheel


def requirements(dist: importlib.metadata.Distribution | None = None,
                 metadata: str | None = None) -> list[Requirement]:
    """The requirements (without extras' ones) of an installed distribution or METADATA."""
    lines = (dist.requires or []) if dist is not None else [
        line.split(":", 1)[1].strip() for line in (metadata or "").splitlines()
        if line.startswith("Requires-Dist:")]
    found = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found.append(requirement)
    return found


def closure(names: set[str]) -> set[str]:
    """``names`` and everything they require, as installed here (canonical names)."""
    done: set[str] = set()
    todo = [canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        todo.extend(canonical(r.name) for r in requirements(importlib.metadata.distribution(name)))
    return done


def _link_distribution(name: str, site: Path) -> None:
    dist = importlib.metadata.distribution(name)
    tops = {Path(str(f)).parts[0] for f in dist.files or ()}
    base = Path(str(dist.locate_file("")))
    for top in tops - {"..", "__pycache__"}:
        target = site / top
        if not target.exists():
            target.symlink_to(base / top)


@dataclass
class Venv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def site(self) -> Path:
        (site,) = (self.path / "lib").glob("python3.*/site-packages")
        return site

    def run(self, *args: str | Path, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a program of the environment (``bin/NAME``) or a command line."""
        first = str(args[0])
        program = self.path / "bin" / first if "/" not in first else Path(first)
        return subprocess.run([str(program), *map(str, args[1:])], cwd=cwd,
                              env=clean_env(env), capture_output=True, text=True,
                              timeout=timeout)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment minus what would let the checkout leak into a child."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP",
                        "DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.update(extra or {})
    return env


def make_venv(path: Path, wheel: Path, dependencies: set[str]) -> Venv:
    """A new environment with ``wheel`` installed by pip and ``dependencies`` linked in."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    venv = Venv(path)
    # The test environment's pip installs into the new one (pip --python).
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv.python), "install",
                    "--quiet", "--no-deps", "--no-compile", str(wheel)],
                   check=True, capture_output=True, text=True)
    for name in sorted(closure(dependencies)):
        _link_distribution(name, venv.site)
    return venv


def readme_example() -> str:
    """The Python code block of the README's "Use the engine from Python" section.

    Read from README.md once the section is there, else from the draft it is
    merged from.
    """
    for source in (README, README_DRAFT):
        if source.is_file() and EXAMPLE_HEADING in (text := source.read_text()):
            section = text.split(EXAMPLE_HEADING, 1)[1]
            match = re.search(r"^```python\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
            assert match, f"{source}: no ```python block under {EXAMPLE_HEADING!r}"
            return match.group(1)
    raise AssertionError(f"README.md has no {EXAMPLE_HEADING!r} section (nor {README_DRAFT})")
