"""The subcommands: one module each (``read`` and ``write`` share one).

Every module has ``register(subparsers, parents)``, which adds its parser(s) and
sets ``run`` to a function ``run(args) -> exit status``.
"""

from __future__ import annotations

import argparse
import importlib

from ..args import Parents

#: Modules in the order their subcommands appear in ``vdimg --help``.
_MODULES = ("formats", "info", "create", "convert", "merge", "compact", "resize", "set",
            "rebase", "check", "map", "compare", "readwrite", "discard", "dump")


def register(subparsers: argparse._SubParsersAction, parents: Parents) -> None:
    for name in _MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers, parents)
