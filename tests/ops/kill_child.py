"""Run ``vdimg`` in this process and kill it (SIGKILL) just before its N-th change
to any file: ``python -m tests.ops.kill_child N ARGS...`` (N = 0: never).

Every change counts: writes, size changes, hole punching, kernel copies, deletions
and renames.  At the end of a run that was not killed, ``changes=<count>`` is printed
on stdout, so a test can spread its kill points over the whole operation.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any, Callable

from vdgui.cli.main import main
from vdgui.engine.io.file import FileProvider, FileStorage

_changes = 0


def _counted(method: Callable[..., Any], limit: int) -> Callable[..., Any]:
    @functools.wraps(method)
    def counting(*args: Any) -> Any:
        global _changes
        _changes += 1
        if _changes == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return method(*args)
    return counting


def run(limit: int, argv: list[str]) -> int:
    for cls, names in ((FileStorage, ("_write", "_set_size", "_copy", "punch_hole")),
                       (FileProvider, ("delete", "move"))):
        for name in names:
            setattr(cls, name, _counted(getattr(cls, name), limit))
    status = main(argv)
    print(f"changes={_changes}")
    return status


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]), sys.argv[2:]))
