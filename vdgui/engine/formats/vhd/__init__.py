"""VHD: Virtual Hard Disk (Connectix/Microsoft Virtual PC, Hyper-V; qemu's "vpc").

Layout (big-endian; Microsoft's "Virtual Hard Disk Image Format Specification"):

* **fixed** (disk type 2): the raw disk, then a 512-byte ``conectix`` footer;
* **dynamic** (3) and **differencing** (4): a copy of the footer at offset 0, the
  ``cxsparse`` dynamic header (BAT offset, block size, parent UUID, time stamp, name
  and locators), the block allocation table, parent locator data (differencing),
  the blocks (each a sector bitmap and the data), and the footer at the very end.
  New dynamic images are laid out exactly as ``qemu-img create -f vpc`` lays them
  out; differencing images add two locator areas (``W2ku``, ``W2ru``) after the BAT,
  as VirtualBox does.  Blocks are 2 MiB (option ``BlockSize``).

Modules: :mod:`.footer` (records, checksums, time stamps, UUID byte order),
:mod:`.geometry` (CHS and the virtual size rule), :mod:`.locators` (parent
locators), :mod:`.dynamic` (BAT, bitmaps, block I/O), :mod:`.space` (where things
lie in the file, compaction plans), :mod:`.create` (new files), :mod:`.image` (the
backend), :mod:`.check` (check and repair).

**Virtual size.**  We create images with the exact requested size as original and
current size, the geometry the specification's algorithm gives for it, and creator
application ``qem2``: the creator for which every qemu release takes the current
size (qemu 7.2 would take the CHS product, up to a cylinder smaller, for a creator
it does not know, such as an honest code of our own).  ``qem2`` is what
``qemu-img -o force_size=on`` writes, so the field says what it is meant to say:
"trust the current size".  Creator version 0.1, host OS ``Wi2k``.  What others read
back from our images:

* qemu-img / qemu (any version): exactly the requested size;
* VirtualBox, Hyper-V, Azure, Xen: exactly the requested size (the current size);
  Azure additionally wants fixed images whose size is a whole number of MiB, and we
  store what is asked for, so ask for whole MiB there;
* Virtual PC and other CHS-only readers: the CHS product, equal to the request only
  when the size is a CHS product (``qemu-img create -f vpc`` rounds sizes up to
  one), otherwise smaller by less than one cylinder (at most 16 x 255 sectors).

Sizes above 2040 GiB (the specification's and qemu's limit) are refused.  How we
read sizes (qemu's rule, except for creators qemu 7.2 does not know) is explained
in :mod:`.geometry`.

**Writes.**  A new block goes where the footer was: bitmap, data and the moved
footer in one write, then the BAT entry, so at every moment the file ends with a
valid footer and a crash at worst leaks the new block.  Differencing images track
sectors in the bitmaps (see :mod:`.dynamic`); all-zero blocks are stored there,
because VHD has no zero marker and only stored zeros hide the parent.

**Operations.**  Dynamic and differencing images release whole blocks (compaction,
discard) and are compacted by moving the last blocks and locator data into the
holes, copying first and repointing in a transaction.  VHD has no zero marker: a
zeroed block of a differencing image stays allocated unless the parent reads zeros
there too (VirtualBox freed it, showing the parent's data again), and a discard
there writes zeros.  Resizing grows the BAT in place, moving the blocks in its
way to the end of the file first; shrinking needs nothing stored past the new end;
a fixed image's footer moves.  Fixed images cannot be compacted, and no image
whose footer records a saved state can be compacted or resized (the
specification forbids it).  The footer copy at offset 0 and the footer at the end
are always written together, in one transaction.

**Damage.**  Footer and dynamic header checksums are verified.  A damaged footer at
the end whose copy at offset 0 is intact opens read-only with a warning and refuses
read/write opens with ``VERR_VD_IMAGE_CORRUPTED`` (``vdimg repair`` rewrites it);
likewise a bad dynamic header checksum or a BAT pointing outside the blocks.
qemu 7.2 itself refuses any image whose first footer (it reads offset 0 first) has
a bad checksum.  :mod:`.check` finds and repairs damage (compared there with
VirtualBox's repair; qemu-img has no check for VHD).

**Metadata.**  Modification UUIDs and comments do not exist in VHD (NotSupported, as
in VirtualBox); there is no logical geometry; the physical geometry is the
footer's.  Differencing images record the parent's UUID, its modification time,
its file name and its locators (:mod:`.locators`).
"""

from .image import VhdImage

__all__ = ["VhdImage"]
