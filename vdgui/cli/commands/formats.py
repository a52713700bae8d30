"""``vdimg formats [--json]``: every backend and what it can do (``VDBackendInfo``)."""

from __future__ import annotations

import argparse
from typing import Any

from vdgui.engine import BackendInfo, Capability, backends
from vdgui.engine.registry import operations

from ..args import Parents
from ..output import print_fields, print_json


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    parser = subparsers.add_parser(
        "formats", parents=[parents.base], help="list the image formats and their abilities",
        description="List every image format with its capabilities, file extensions, "
                    "variants and creation options.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def backend_record(info: BackendInfo) -> dict[str, Any]:
    return {
        "name": info.name.lower(),
        "description": info.description,
        "capabilities": [cap.name.lower() for cap in Capability
                         if cap.name and info.capabilities & cap],
        "extensions": [{"extension": ext, "type": kind.label} for ext, kind in info.extensions],
        "variants": list(info.variants),
        "operations": operations(info.name),
        "config_keys": [{"name": key.name, "default": key.default,
                         "type": key.value_type.name.lower(),
                         "flags": [f.name.lower() for f in type(key.flags)
                                   if f.name and key.flags & f]}
                        for key in info.config_keys],
    }


def run(args: argparse.Namespace) -> int:
    records = [backend_record(info) for info in backends()]
    if args.json:
        print_json(records)
        return 0
    for i, record in enumerate(records):
        if i:
            print()
        print(f"{record['name']}: {record['description']}")
        options = ", ".join(f"{k['name']}={k['default']}" if k["default"] is not None
                            else k["name"] for k in record["config_keys"])
        print_fields([
            ("extensions", ", ".join(e["extension"] for e in record["extensions"]) or "-"),
            ("variants", ", ".join(record["variants"]) or "- (cannot create images)"),
            ("capabilities", ", ".join(record["capabilities"]) or "-"),
            ("operations", ", ".join(record["operations"]) or "-"),
            ("options", options or "-"),
        ], indent="  ")
    return 0
