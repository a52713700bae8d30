"""VHD disk geometry and the virtual size that readers derive from the footer.

The footer stores both a "current size" in bytes and a CHS geometry.  The
specification's appendix gives the algorithm that derives the geometry from a
size; the product cylinders x heads x sectors is usually a little smaller than the
size, and readers disagree on which of the two is the disk's size:

* Virtual PC uses the CHS product; Hyper-V, Azure, VirtualBox, Xen and disk2vhd use
  the current size.
* qemu guesses from the creator application: images from Virtual PC (``vpc ``) and
  from qemu itself without ``force_size`` (``qemu``) are sized by CHS, unless the
  geometry is the maximum 65535/16/255, which means "too large for CHS, use the
  current size".  qemu up to at least 7.2 uses the current size only for a fixed
  list of other creators (``win ``, ``qem2``, ``d2v ``, ``CTXS``, ``tap\\0``) and CHS
  for every creator it does not know; a 2025 upstream change proposes to flip that
  default so that only ``vpc `` and ``qemu`` are sized by CHS.

We follow the flipped rule (:func:`virtual_size`): it agrees with qemu 7.2 on every
image qemu, Virtual PC, Hyper-V, disk2vhd and Xen write, and differs only for
creators qemu 7.2 does not know (VirtualBox's ``vbox`` above all), where qemu 7.2
shows a disk up to one cylinder smaller than the one the creator wrote; reading the
CHS product there would silently cut off the tail of the disk (a GPT backup header,
for instance).

**After a resize** (:func:`resized_sizing`) the footer gets the new current size and
the specification's geometry for it, and every reader must still agree on the
size.  A creator qemu sizes by the current size (``qem2``, ``win ``...) stays; so
does ``vpc ``/``qemu`` when the new size is exactly the product of its geometry
(Virtual PC then reads it right too, and the geometry can no longer change: see
the ``pchs`` setter).  Every other image becomes ``qem2`` ("trust the current
size"): qemu 7.2 would otherwise read a CHS product up to a cylinder short of the
new size (a ``vbox`` image included), and ``VDResize`` recomputes the geometry
afterwards (keeping heads and sectors, at most 16383 cylinders), which must not
change the size anyone reads.  qemu itself cannot resize VHD images.
"""

from __future__ import annotations

from ...types import Geometry
from .footer import SECTOR

#: The largest geometry a footer can hold (65535 cylinders, 16 heads, 255 sectors).
MAX_CHS_SECTORS = 65535 * 16 * 255

#: Creator applications whose images are sized by their CHS geometry.
CHS_SIZED_CREATORS = (b"vpc ", b"qemu")
#: Creator applications for which qemu (every release) takes the current size.
QEMU_CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")


def chs_geometry(size: int) -> Geometry:
    """The geometry the specification's appendix assigns to a disk of ``size`` bytes."""
    sectors = min(size // SECTOR, MAX_CHS_SECTORS)
    if sectors >= 65535 * 16 * 63:
        per_track, heads = 255, 16
        cyl_heads = sectors // per_track
    else:
        per_track = 17
        cyl_heads = sectors // per_track
        heads = max(4, (cyl_heads + 1023) // 1024)
        if cyl_heads >= heads * 1024 or heads > 16:
            per_track, heads = 31, 16
            cyl_heads = sectors // per_track
        if cyl_heads >= heads * 1024:
            per_track, heads = 63, 16
            cyl_heads = sectors // per_track
    return Geometry(cyl_heads // heads, heads, per_track)


def chs_bytes(geometry: Geometry) -> int:
    """Bytes addressed by ``geometry``."""
    return geometry.cylinders * geometry.heads * geometry.sectors * SECTOR


def sized_by_chs(creator_app: bytes, geometry: Geometry) -> bool:
    """True when the disk's size is its CHS product rather than its current size."""
    product = geometry.cylinders * geometry.heads * geometry.sectors
    return (creator_app in CHS_SIZED_CREATORS and product != MAX_CHS_SECTORS
            and product > 0)


def virtual_size(creator_app: bytes, current_size: int, geometry: Geometry) -> int:
    """The disk size, whole sectors, as :mod:`this module <.geometry>` explains.

    A CHS-sized image with an empty geometry falls back to the current size (qemu
    would show an empty disk).
    """
    if sized_by_chs(creator_app, geometry):
        return chs_bytes(geometry)
    return current_size // SECTOR * SECTOR


def resized_sizing(creator_app: bytes, size: int) -> tuple[Geometry, bool]:
    """The geometry of an image resized to ``size``, and whether it may keep its
    creator application (else it becomes ``qem2``; see the module docstring)."""
    geometry = chs_geometry(size)
    product = geometry.cylinders * geometry.heads * geometry.sectors
    exact = product * SECTOR == size and product != MAX_CHS_SECTORS
    keep = creator_app in QEMU_CURRENT_SIZE_CREATORS or (
        creator_app in CHS_SIZED_CREATORS and exact)
    return geometry, keep
