"""Formatting for people and for scripts.

Human output is aligned ``key: value`` lines; ``--json`` output is one JSON
document.  Engine values (UUIDs, geometries, sizes) are turned into their printed
form here so every subcommand shows them alike.
"""

from __future__ import annotations

import json
import sys
import uuid as uuidlib
from typing import Any, Callable, Iterable, Sequence, TypeVar

import humanize

from vdgui.engine import NIL_UUID, Geometry
from vdgui.engine.errors import GeometryNotSet, NotSupported

T = TypeVar("T")


def optional(get: Callable[[], T]) -> T | None:
    """``get()``, or None where the format has no such field."""
    try:
        return get()
    except (NotSupported, GeometryNotSet):
        return None


def uuid_value(value: uuidlib.UUID | None) -> str | None:
    """Canonical lower-case text; None for a missing or all-zero UUID."""
    return None if value is None or value == NIL_UUID else str(value)


def geometry_value(value: Geometry | None) -> dict[str, int] | None:
    if value is None or not value.is_set:
        return None
    return {"cylinders": value.cylinders, "heads": value.heads, "sectors": value.sectors}


def human_size(n: int) -> str:
    """``1073741824 (1.0 GiB)``."""
    return f"{n} ({humanize.naturalsize(n, binary=True)})"


def human_value(value: Any) -> str:
    """A JSON-ready value as a person reads it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict) and set(value) == {"cylinders", "heads", "sectors"}:
        return f"{value['cylinders']}/{value['heads']}/{value['sectors']}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_fields(fields: Iterable[tuple[str, str]], indent: str = "") -> None:
    """Aligned ``key: value`` lines."""
    fields = list(fields)
    width = max((len(key) for key, _ in fields), default=0) + 1
    for key, value in fields:
        print(f"{indent}{key + ':':<{width}} {value}".rstrip())


def print_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last column is left ragged."""
    rows = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths)] + [row[-1]]
        print("  ".join(cells).rstrip())
