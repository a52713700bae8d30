"""QCOW2 (QEMU copy-on-write, versions 2 and 3): header, L1/L2 tables, refcounts,
snapshots, the backend built on them, compaction and check/repair."""

from .image import Qcow2Image

__all__ = ["Qcow2Image"]
