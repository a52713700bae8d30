"""The VMDK backend's configuration keys (creation options and per-image settings)."""

from __future__ import annotations

from typing import Any, Mapping

#: Per-image setting: follow extent paths outside the descriptor's folder, and open
#: raw-disk descriptors at all.
ALLOW_EXTERNAL = "AllowExternalExtents"


def option(config: Mapping[str, Any] | None, key: str) -> Any:
    """The value of configuration key ``key`` (keys are case-insensitive), or None."""
    for name, value in (config or {}).items():
        if name.lower() == key.lower():
            return value
    return None


def flag(config: Mapping[str, Any] | None, key: str) -> bool:
    """A yes/no key: ``1``, ``true``, ``yes`` and ``on`` mean yes."""
    value = option(config, key)
    return value is not None and str(value).strip().lower() in ("1", "true", "yes", "on")
