"""What a check finds: the record every backend's check and the repair report share."""

from __future__ import annotations

from dataclasses import dataclass

ERROR, LEAK, WARNING = "error", "leak", "warning"


@dataclass(frozen=True)
class Finding:
    """One problem: how bad, what, where (a file offset, or None), and the fix a
    repair applies (None when it cannot be fixed)."""

    severity: str
    what: str
    offset: int | None = None
    fix: str | None = None
    #: Bytes a repair gives back (leaked blocks).
    leaked_bytes: int = 0


__all__ = ["ERROR", "LEAK", "WARNING", "Finding"]
