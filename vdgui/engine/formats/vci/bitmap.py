"""The VCI block-allocation map: a 512-byte header with counters, then one bit per block.

Bit *i* is bit ``i % 8`` (least significant first) of byte ``i // 8``; 1 = in use.
The map is kept packed in memory (one bit per block) and searched in windows, so
memory and time per search stay bounded whatever the cache size.  Changed bytes are
remembered as one dirty span and written back by the owner.
"""

from __future__ import annotations

import numpy as np

from ...errors import Corrupted, InvalidState
from ...layout import Layout
from .header import BLOCK

MAGIC = 0x4B4C4256  # "VBLK"
VERSION = 1

MAP_HEADER = Layout("VCI allocation map header", "<", [
    ("magic", "I"), ("version", "I"), ("managed", "Q"), ("free", "Q"),
    ("metadata", "Q"), ("data", "Q"), ("reserved", "472s")])
assert MAP_HEADER.size == BLOCK

METADATA, DATA = "metadata", "data"

#: Blocks examined per step of a search.
WINDOW = 1 << 16
#: Blocks compared per step when checking the map against the tree.
CHECK_CHUNK = 1 << 24


class AllocationMap:
    """Which blocks of the cache are in use, and the counters of the map header."""

    def __init__(self, managed: int, bits: np.ndarray, metadata: int = 0,
                 data: int = 0) -> None:
        self.managed = managed
        self.bits = bits  # packed, little bit order, length a multiple of 512
        self.counts = {METADATA: metadata, DATA: data}
        self.dirty: tuple[int, int] | None = None  # byte span of bits to write back

    @classmethod
    def empty(cls, managed: int, bitmap_bytes: int) -> AllocationMap:
        return cls(managed, np.zeros(bitmap_bytes, dtype=np.uint8))

    @classmethod
    def parse(cls, raw: bytes, managed: int, path: str) -> AllocationMap:
        """The map read from the file (its header block, then the bitmap)."""
        h = MAP_HEADER.unpack(raw, 0, path)
        if h["magic"] != MAGIC:
            raise Corrupted("the VCI allocation map has no VBLK signature", path)
        if h["version"] != VERSION:
            raise Corrupted(f"the VCI allocation map has unknown version {h['version']}", path)
        if h["managed"] != managed:
            raise Corrupted(f"the VCI allocation map manages {h['managed']} blocks but the "
                            f"cache has {managed}", path)
        if h["free"] + h["metadata"] + h["data"] != managed:
            raise Corrupted(f"the VCI allocation map counters do not add up (free "
                            f"{h['free']} + metadata {h['metadata']} + data {h['data']} != "
                            f"{managed})", path)
        bits = np.frombuffer(raw, dtype=np.uint8, offset=BLOCK).copy()
        return cls(managed, bits, h["metadata"], h["data"])

    # -- counters and the header block ------------------------------------------------

    @property
    def free(self) -> int:
        return self.managed - self.counts[METADATA] - self.counts[DATA]

    def header_bytes(self) -> bytes:
        return MAP_HEADER.pack(dict(magic=MAGIC, version=VERSION, managed=self.managed,
                                    free=self.free, metadata=self.counts[METADATA],
                                    data=self.counts[DATA], reserved=b""))

    # -- changing bits ------------------------------------------------------------------

    def _unpack(self, start: int, count: int) -> tuple[int, np.ndarray, int]:
        lo, hi = start >> 3, (start + count + 7) >> 3
        return lo, np.unpackbits(self.bits[lo:hi], bitorder="little"), start - lo * 8

    def _change(self, start: int, count: int, used: bool, kind: str) -> None:
        if count <= 0:
            return
        if start < 0 or start + count > self.managed:
            raise InvalidState(f"internal error: blocks {start}+{count} lie outside the "
                               f"cache map")
        lo, bits, at = self._unpack(start, count)
        part = bits[at:at + count]
        clash = part.any() if used else not part.all()
        if clash:
            raise InvalidState(f"internal error: blocks {start}+{count} are not all "
                               f"{'free' if used else 'in use'}")
        part[:] = used
        self.bits[lo:lo + len(bits) // 8] = np.packbits(bits, bitorder="little")
        self.counts[kind] += count if used else -count
        hi = lo + len(bits) // 8
        self.dirty = (lo, hi) if self.dirty is None else (min(lo, self.dirty[0]),
                                                           max(hi, self.dirty[1]))

    def take(self, start: int, count: int, kind: str) -> None:
        """Mark free blocks as used for ``kind`` (METADATA or DATA)."""
        self._change(start, count, True, kind)

    def release(self, start: int, count: int, kind: str) -> None:
        """Mark used blocks free again."""
        self._change(start, count, False, kind)

    # -- searching ------------------------------------------------------------------------

    def free_at(self, start: int, limit: int) -> int:
        """How many blocks from ``start`` on are free (at most ``limit``)."""
        limit = min(limit, self.managed - start)
        if limit <= 0:
            return 0
        _, bits, at = self._unpack(start, limit)
        used = np.flatnonzero(bits[at:at + limit])
        return int(used[0]) if used.size else limit

    def _free_runs(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Starts and lengths of the free runs within ``[lo, hi)``."""
        _, bits, at = self._unpack(lo, hi - lo)
        free = np.zeros(hi - lo + 2, dtype=np.int8)
        free[1:-1] = bits[at:at + hi - lo] == 0
        edges = np.diff(free)
        starts = np.flatnonzero(edges == 1)
        return starts + lo, np.flatnonzero(edges == -1) - starts

    def find(self, need: int, hint: int = 0, partial: bool = False) -> tuple[int, int] | None:
        """A free run for ``need`` blocks: ``(start, length)``, searched from ``hint``
        on and then from the start (next fit, so consecutive stores end up side by
        side).  With ``partial`` a shorter run is accepted when no run is long
        enough.  None when nothing fits."""
        if self.free == 0 or (self.free < need and not partial):
            return None
        hint = hint if 0 <= hint < self.managed else 0
        wanted = [need, 1] if partial and need > 1 else [need]
        for length in wanted:
            for seg_lo, seg_hi in ((hint, self.managed), (0, hint)):
                for w in range(seg_lo, seg_hi, WINDOW):
                    # Read ``length`` past the window so a run starting inside it is
                    # seen whole up to the length asked for.
                    starts, lengths = self._free_runs(w, min(w + WINDOW + length,
                                                             self.managed))
                    ok = np.flatnonzero((starts < min(w + WINDOW, seg_hi))
                                        & (lengths >= length))
                    if ok.size:
                        i = int(ok[0])
                        return int(starts[i]), min(int(lengths[i]), need)
        return None

    # -- validation -----------------------------------------------------------------------

    def first_mismatch(self, starts: np.ndarray, ends: np.ndarray) -> int | None:
        """The first block whose bit disagrees with the used ranges given, or None.

        ``[starts[i], ends[i])`` must be sorted, non-overlapping and inside the map.
        """
        for lo in range(0, self.managed, CHECK_CHUNK):
            hi = min(lo + CHECK_CHUNK, self.managed)
            sel = np.flatnonzero((ends > lo) & (starts < hi))
            edges = np.zeros(hi - lo + 1, dtype=np.int8)
            np.add.at(edges, np.clip(starts[sel], lo, hi) - lo, 1)
            np.add.at(edges, np.clip(ends[sel], lo, hi) - lo, -1)
            expected = np.cumsum(edges[:-1], dtype=np.int8)
            _, bits, at = self._unpack(lo, hi - lo)
            wrong = np.flatnonzero(bits[at:at + hi - lo] != expected)
            if wrong.size:
                return lo + int(wrong[0])
        return None
