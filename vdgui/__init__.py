"""vdgui: a desktop manager and engine for virtual disk images."""

__version__ = "0.1.0"
