"""The freedesktop files in resources/, checked by the standard tools.

desktop-file-validate (desktop-file-utils) and appstreamcli (appstream) validate
the desktop entry and the metainfo; update-mime-database (shared-mime-info)
compiles the MIME info next to the system's, and Qt's QMimeDatabase -- an
independent reader of that database -- then says which type each real image
gets: every format must land on a type that the desktop entry lists, so that a
file manager offers "Open with vdgui".
"""

from __future__ import annotations

import configparser
import json
import shutil
import struct
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .helpers import APP_ID, DESKTOP, METAINFO, MIME_INFO, RESOURCES, ROOT, clean_env

MIME_NS = "{http://www.freedesktop.org/standards/shared-mime-info}"
SYSTEM_MIME = Path("/usr/share/mime/packages/freedesktop.org.xml")
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256)
SCREENSHOT_URL = "https://raw.githubusercontent.com/vdgui/vdgui/main/"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it)")
    return path


def desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(DESKTOP, encoding="utf-8")
    return parser["Desktop Entry"]


def desktop_mime_types() -> list[str]:
    return [t for t in desktop_entry()["MimeType"].split(";") if t]


def metainfo() -> ET.Element:
    return ET.parse(METAINFO).getroot()


# -- the validators --------------------------------------------------------------------


def test_desktop_entry_passes_desktop_file_validate():
    result = subprocess.run([tool("desktop-file-validate"), str(DESKTOP)],
                            capture_output=True, text=True)
    # Not even hints: its output lists errors, warnings and hints alike.
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_metainfo_passes_appstreamcli_validate():
    result = subprocess.run([tool("appstreamcli"), "validate", "--no-net", "--pedantic",
                             "--no-color", str(METAINFO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation was successful" in result.stdout, result.stdout


def test_appstreamcli_rejects_a_broken_metainfo(tmp_path: Path):
    # The validator really reads the file: without <summary> it must fail.
    text = METAINFO.read_text()
    start, end = text.index("<summary>"), text.index("</summary>") + len("</summary>")
    broken = tmp_path / METAINFO.name
    broken.write_text(text[:start] + text[end:])
    result = subprocess.run([tool("appstreamcli"), "validate", "--no-net", str(broken)],
                            capture_output=True, text=True)
    assert result.returncode != 0


# -- consistency between the files ------------------------------------------------------


def test_metainfo_describes_the_desktop_entry_and_the_programs():
    root = metainfo()
    entry = desktop_entry()
    assert root.findtext("id") == APP_ID
    assert root.findtext("launchable[@type='desktop-id']") == DESKTOP.name
    assert root.findtext("icon[@type='stock']") == entry["Icon"] == APP_ID
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    programs = {*project["scripts"], *project["gui-scripts"]}
    assert {b.text for b in root.iterfind("provides/binary")} == programs
    assert entry["Exec"].split()[0] == entry["TryExec"] == "vdgui"
    assert project["license"] == root.findtext("project_license")


def test_metainfo_media_types_are_the_desktop_entrys_canonical_ones():
    aliases = {a.get("type") for a in ET.parse(MIME_INFO).getroot().iter(f"{MIME_NS}alias")}
    if SYSTEM_MIME.is_file():
        aliases |= {a.get("type") for a in ET.parse(SYSTEM_MIME).getroot().iter(f"{MIME_NS}alias")}
    canonical = [t for t in desktop_mime_types() if t not in aliases]
    assert [m.text for m in metainfo().iterfind("provides/mediatype")] == canonical


def test_mime_info_defines_only_types_the_system_lacks():
    if not SYSTEM_MIME.is_file():
        pytest.skip("shared-mime-info is not installed")
    system = ET.parse(SYSTEM_MIME).getroot()
    known = {t.get("type") for t in system.iter(f"{MIME_NS}mime-type")}
    known |= {a.get("type") for a in system.iter(f"{MIME_NS}alias")}
    ours = [t.get("type") for t in ET.parse(MIME_INFO).getroot().iter(f"{MIME_NS}mime-type")]
    assert ours and not set(ours) & known
    assert set(ours) <= set(desktop_mime_types())


# -- what a file manager sees --------------------------------------------------------------


def _mime_database(tmp_path: Path) -> Path:
    """The system's MIME packages plus ours, compiled into tmp_path/mime."""
    if not SYSTEM_MIME.is_file():
        pytest.skip("shared-mime-info is not installed")
    packages = tmp_path / "mime" / "packages"
    packages.mkdir(parents=True)
    shutil.copy(SYSTEM_MIME, packages)
    shutil.copy(MIME_INFO, packages)
    result = subprocess.run([tool("update-mime-database"), str(tmp_path / "mime")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # It reports a package it cannot parse but still exits 0.
    assert "rror" not in result.stderr and "arning" not in result.stderr, result.stderr
    return tmp_path


def _images(folder: Path) -> dict[str, str]:
    """file name -> format: real images (qemu-img), a VCI header, a raw image."""
    formats = {"vdi": "vdi", "vmdk": "vmdk", "vhd": "vpc", "vhdx": "vhdx", "qcow": "qcow",
               "qcow2": "qcow2", "qed": "qed", "hdd": "parallels"}
    made = {}
    for extension, fmt in formats.items():
        for name in (f"disk.{extension}", f"{fmt}-without-extension"):
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(folder / name), "4M"],
                           check=True)
            made[name] = fmt
    # VCI (no writer exists to compare with): the signature and version 1 at offset 0.
    header = struct.pack("<II", 0x00494356, 1).ljust(1024, b"\0")
    for name in ("cache.vci", "vci-without-extension"):
        (folder / name).write_bytes(header)
        made[name] = "vci"
    (folder / "disk.img").write_bytes(bytes(1 << 20))
    made["disk.img"] = "raw"
    return made


@pytest.mark.interop
def test_every_format_gets_a_mime_type_the_desktop_entry_lists(tmp_path: Path):
    data_dir = _mime_database(tmp_path / "data")
    images = tmp_path / "images"
    images.mkdir()
    made = _images(images)
    code = (
        "import json, sys\n"
        "from PySide6.QtCore import QMimeDatabase\n"
        "db = QMimeDatabase()\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    t = db.mimeTypeForFile(name)\n"
        "    out[name] = [t.name(), *t.aliases()]\n"
        "print(json.dumps(out))\n")
    # Qt reads the MIME database of XDG_DATA_DIRS when it finds one there.
    result = subprocess.run([sys.executable, "-c", code, *made], cwd=images,
                            env=clean_env({"XDG_DATA_DIRS": str(data_dir)}),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    types = json.loads(result.stdout.strip().splitlines()[-1])
    listed = set(desktop_mime_types())
    # Those without an extension are recognised by their magic number alone.
    wrong = {name: names for name, names in types.items() if not listed & set(names)}
    assert not wrong, f"not offered to vdgui: {wrong}"
    assert types["disk.hdd"][0] == "application/x-parallels-disk"
    assert types["parallels-without-extension"][0] == "application/x-parallels-disk"
    assert types["vci-without-extension"][0] == "application/x-virtualbox-vci"


# -- icons and screenshots ----------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_application_icon_has_an_svg_and_every_png_size():
    hicolor = RESOURCES / "icons" / "hicolor"
    svg = ET.parse(hicolor / "scalable" / "apps" / f"{APP_ID}.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    for size in PNG_SIZES:
        assert _png_size(hicolor / f"{size}x{size}" / "apps" / f"{APP_ID}.png") == (size, size)


def test_screenshots_exist_in_the_repository_are_small_and_as_declared():
    shots = list(metainfo().iterfind("screenshots/screenshot/image"))
    assert shots
    for image in shots:
        url = image.text or ""
        assert url.startswith(SCREENSHOT_URL), url
        path = ROOT / url.removeprefix(SCREENSHOT_URL)
        assert path.is_file(), f"{url}: no such file in the repository"
        assert path.stat().st_size <= 1 << 20
        assert _png_size(path) == (int(image.get("width", 0)), int(image.get("height", 0)))
