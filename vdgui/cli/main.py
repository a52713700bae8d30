"""``vdimg``: parser, dispatch, and the mapping of failures to exit statuses.

Exit statuses (cli.md): 0 success, 1 a negative answer (``compare``), 2 usage
error, 3 the operation failed.  Every failure is one ``vdimg: error:`` line on
stderr; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from typing import Iterator, Sequence

import vdgui
from vdgui.engine import Cancelled, ParentNotFound, VDError
from vdgui.engine.errors import from_os_error

from . import commands
from .args import Parser, UsageError, add_debug, make_parents

PROG = "vdimg"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Create, inspect and change virtual disk images.")
    parser.add_argument("--version", action="version", version=f"{PROG} {vdgui.__version__}")
    add_debug(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.register(sub, make_parents())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vdimg`` with ``argv`` (default: the process's arguments); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        return _fail("no command given (see 'vdimg --help')", 2, False)
    debug = bool(getattr(args, "debug", False))
    with _logging(debug):
        return _run(args, debug)


def _run(args: argparse.Namespace, debug: bool) -> int:
    subject = _subject(args)
    try:
        return args.run(args) or 0
    except UsageError as exc:
        return _fail(str(exc), 2, debug)
    except (Cancelled, KeyboardInterrupt):
        where = f"{subject}: " if subject else ""
        return _fail(f"{where}interrupted: the operation was cancelled", 3, debug)
    except ParentNotFound as exc:
        return _fail(f"{exc} (--search-path DIR)", 3, debug)
    except VDError as exc:
        return _fail(str(exc), 3, debug)
    except BrokenPipeError:
        # The reader of our output went away (`vdimg read ... | head`): not an error.
        _silence_stdout()
        return 0
    except OSError as exc:
        return _fail(str(from_os_error(exc)), 3, debug)
    except Exception as exc:  # anything else is a bug in vdgui
        return _fail(f"internal error: {type(exc).__name__}: {exc} (this is a bug; run "
                     f"again with --debug for details)", 3, debug)


def _fail(message: str, status: int, debug: bool) -> int:
    if debug and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def _subject(args: argparse.Namespace) -> str | None:
    """The file a command is mainly about, to name it in messages that lack one."""
    for name in ("image", "image_a", "src"):
        if getattr(args, name, None):
            return str(getattr(args, name))
    return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


@contextlib.contextmanager
def _logging(debug: bool) -> Iterator[None]:
    """Engine log records go to stderr with --debug, nowhere otherwise.

    Without a handler Python would print warnings on stderr, breaking the
    one-line error contract.
    """
    logger = logging.getLogger("vdgui")
    handler: logging.Handler
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    old_level = logger.level
    logger.addHandler(handler)
    if debug:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
