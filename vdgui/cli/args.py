"""Argument parsing pieces shared by the subcommands.

The parser reports usage errors as the contract's single ``vdimg: error:`` line
(exit 2) instead of argparse's usage block.  The ``type=`` converters below turn
sizes, UUIDs, geometries and format names into engine values at parse time, so a
bad value is a usage error before any file is touched.
"""

from __future__ import annotations

import argparse
import uuid as uuidlib
from dataclasses import dataclass
from typing import Callable, NoReturn, TypeVar

from vdgui.engine import DiskType, Geometry, VDError, parse_size
from vdgui.engine import registry
from vdgui.engine.types import parse_uuid

T = TypeVar("T")


class UsageError(Exception):
    """The command line asks for something impossible: exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``vdimg: error:`` line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"vdimg: error: {message} (see '{self.prog} --help')\n")


@dataclass(frozen=True)
class Parents:
    """Parent parsers holding the options many subcommands share."""

    #: ``--debug`` only (subcommands that open no image).
    base: argparse.ArgumentParser
    #: ``--debug``, ``--search-path DIR``, ``-f FMT``.
    image: argparse.ArgumentParser


def make_parents() -> Parents:
    base = argparse.ArgumentParser(add_help=False)
    add_debug(base)
    image = argparse.ArgumentParser(add_help=False, parents=[base])
    image.add_argument("--search-path", metavar="DIR", action="append", default=[],
                       help="also look for parent images (by UUID) in DIR; repeatable")
    image.add_argument("-f", "--format", metavar="FMT", type=format_name,
                       help="the image's format (default: probed; for a new image, "
                            "from its extension)")
    image.add_argument("--image-option", metavar="KEY=VALUE", action="append", default=[],
                       type=key_value, help="per-image option for the format when opening "
                                            "(e.g. AllowExternalExtents=1 for VMDK); "
                                            "repeatable")
    return Parents(base, image)


def add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's default must not overwrite a --debug given before it.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logging")


def _convert(func: Callable[[str], T], text: str) -> T:
    """Run ``func(text)``, turning engine and value errors into argparse errors."""
    try:
        return func(text)
    except (VDError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size(text: str) -> int:
    """SIZE, OFFSET, LENGTH: bytes with an optional binary suffix."""
    return _convert(parse_size, text)


@dataclass(frozen=True)
class NewSize:
    """SIZE of ``resize``: absolute, or ``+N``/``-N`` relative to the current size."""

    amount: int
    sign: int = 0  # 0 absolute, +1 grow by, -1 shrink by

    def resolve(self, current: int) -> int:
        return self.amount if not self.sign else current + self.sign * self.amount


def new_size(text: str) -> NewSize:
    """SIZE, ``+SIZE`` or ``-SIZE``."""
    stripped = text.strip()
    sign = {"+": 1, "-": -1}.get(stripped[:1], 0)
    return NewSize(size(stripped[1:] if sign else stripped), sign)


def uuid(text: str) -> uuidlib.UUID:
    return _convert(parse_uuid, text)


def uuid_or_new(text: str) -> uuidlib.UUID:
    """A UUID, or ``new`` for a fresh random one."""
    return uuidlib.uuid4() if text.strip().lower() == "new" else uuid(text)


def pchs(text: str) -> Geometry:
    """Physical geometry C/H/S (at most 16 heads, 63 sectors)."""
    geometry = _convert(Geometry.parse, text)
    _convert(lambda _: geometry.validate_pchs(), text)
    return geometry


def lchs(text: str) -> Geometry:
    """Logical geometry C/H/S (at most 255 heads, 63 sectors)."""
    geometry = _convert(Geometry.parse, text)
    _convert(lambda _: geometry.validate_lchs(), text)
    return geometry


def format_name(text: str) -> str:
    """A registered backend's name (case-insensitive, aliases allowed)."""
    return _convert(lambda t: registry.backend_class(t).info.name, text)


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a creation option."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form KEY=VALUE")
    return key.strip(), value


DISK_TYPES = {t.label: t for t in (DiskType.HDD, DiskType.DVD, DiskType.FLOPPY)}


def disk_type(text: str) -> DiskType:
    try:
        return DISK_TYPES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a disk type (choose from {', '.join(DISK_TYPES)})") from None
