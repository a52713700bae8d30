"""The storage I/O interface (the VDINTERFACEIO analogue) and its implementations.

Backends never open files themselves: they receive a :class:`StorageProvider` and
open every file of an image through it.  :class:`FileProvider` works on host
files; :class:`MemoryProvider` keeps files in memory for tests, and
:class:`FaultyProvider` wraps another provider to inject I/O faults.
"""

from .base import IO_CHUNK, Storage, StorageProvider, buffer
from .faulty import Fault, FaultyProvider
from .file import FileProvider, FileStorage
from .memory import MemoryProvider

__all__ = ["Storage", "StorageProvider", "FileProvider", "FileStorage", "MemoryProvider",
           "FaultyProvider", "Fault", "default_provider", "IO_CHUNK", "buffer"]

_default = FileProvider()


def default_provider() -> StorageProvider:
    """The provider used when the caller gives none: host files."""
    return _default
