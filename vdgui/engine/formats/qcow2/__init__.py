"""QCOW2 (QEMU copy-on-write, versions 2 and 3): header, L1/L2 tables, refcounts,
snapshots and the backend built on them."""

from .image import Qcow2Image

__all__ = ["Qcow2Image"]
