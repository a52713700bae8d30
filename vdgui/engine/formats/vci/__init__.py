"""VCI: VirtualBox Cache Image, a disposable cache of disk blocks in front of a chain.

Layout (little-endian, packed; a *block* is 512 bytes and every address and size
below counts blocks):

* **header** (1024 bytes at block 0): signature ``VCI\\0``, version 1, cache size,
  unclean-shutdown flag, type (1 dynamic, 2 fixed), root node, allocation map
  offset and size, image UUID, modification UUID (:mod:`.header`);
* **allocation map** (at block 2): a 512-byte ``VBLK`` header with the managed,
  free, metadata and data counters, then one bit per block of the cache
  (:mod:`.bitmap`);
* **extent B+-tree** of 4 KiB nodes, the empty root leaf right after the map
  (:mod:`.tree`);
* **data**: each extent's blocks, back to back, wherever the map found room.

VirtualBox's own VCI writer never stored anything and mixed up units, so there are
no real files to match beyond the layout.  Where it and the layout disagree we
follow the layout, and we decide the points it leaves open as follows.

**Units and counters.**  Every address is in blocks (VirtualBox passed block
numbers as byte offsets in places).  The map manages every block of the cache,
header and map included: ``managed`` equals the header's cache size, ``metadata``
counts header, map and tree nodes, ``data`` the cached blocks, and ``free`` the
rest, so ``managed = free + metadata + data`` always (VirtualBox swapped the
metadata and data counters).

**Size.**  The requested maximum is rounded up to a multiple of 4096 blocks (2 MiB):
the bitmap then fills its blocks exactly, and VirtualBox's open-time check (map
size minus one equals managed / 4096, rounded down) holds too.  Caches up to
256 GiB are supported (the bitmap is kept in memory).  *Dynamic* caches (the
default) grow as data is stored; option ``Type=fixed`` preallocates the file.  The
cache stores no comment (the format has no field for one).

**Extents.**  Only whole 512-byte blocks are cached; the partial blocks at the
edges of a store are not kept.  An extent is at most 1 MiB; a store right after an
extent whose data can grow in place extends it, otherwise new extents are placed
by next fit from where the last allocation ended, so sequential reads produce
large, physically contiguous extents.

**Tree.**  Leaf entries hold the extents sorted by disk block; an internal entry's
first block is the exact first block of its child's extents and its count spans
to the end of the child's last extent (stored as 0xFFFFFFFF, "up to the next
entry", when wider than 32 bits).  Full nodes split in halves; a node whose last
entry goes is freed, an internal root left with one child is replaced by it, and
under-full nodes are left alone.  Unused entries (count 0 or address 0) are
skipped on reading and never written between used ones.

**LRU list.**  A leaf entry's previous/next fields hold the *data block address* of
the neighbouring extent in the list (unique and never 0, since block 0 is the
header); 0 ends the list.  The list runs from the least recently used extent
(previous 0) to the most recent (next 0).  Reads and rewrites of an extent make it
the most recent; when the map has no free block left (or no 4 KiB run for a node a
split needs), extents are evicted from the old end.  A store that still finds no
room is declined.

**Staying correct.**  A hit returns exactly the bytes stored.  ``update`` rewrites
cached whole blocks in place with the new data and forgets partially rewritten
blocks (and everything when the new content is not given, or when the cache is
read-only and cannot be rewritten): parts of an extent outside the range stay
cached.  Any error while storing or updating stops the cache from serving
anything for the rest of the session (it never fails the disk operation), and
leaves the file marked unclean; so does a failed read of cached data (that read
reports the error).

**Crash safety.**  Metadata (tree nodes, map, counters) lives in memory and is
written by ``flush`` and ``close``, only the nodes and map bytes that changed.  The
unclean flag is set (and flushed) as soon as a cache is opened writable, because
the container reports a disk write only after the image holds it; ``flush`` leaves
it set, and only a clean close, after all metadata is written and flushed, clears
it.  An unclean cache is
never trusted: opened writable it is reset to empty in place (same UUIDs, size and
type; a dynamic file is truncated), opened read-only it serves nothing.

**Damage.**  A clean cache is checked completely on open: header fields, map
header and counters, the tree (depth at most 12, node count bounded by the
metadata counter, each node visited once, entries sorted, non-overlapping and
within their parent's range, leaves at one depth, no flags set), no two
structures sharing a block, the bitmap equal to exactly the blocks in use, cached
data inside the file, and one LRU list through every extent.  Any inconsistency
refuses the open with :class:`~vdgui.engine.errors.Corrupted`; a file that is not
a VCI cache gives :class:`~vdgui.engine.errors.InvalidHeader`.

UUIDs are stored in the little-endian GUID layout, as VirtualBox stores them.  A
new cache has a nil modification UUID until the container pairs it with the top
image.
"""

from .cache import VciCache

__all__ = ["VciCache"]
