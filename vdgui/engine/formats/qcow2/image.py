"""The QCOW2 backend: opening, reading, writing and creating version 2 and 3 images.

Reads go through :class:`~vdgui.engine.blockmap.BlockMap` over the L1/L2 lookup;
compressed clusters are inflated on top.  Writes that need new storage take
clusters from the refcounts (reusing free ones, else at the end of the file) in
the crash-safe order data, refcount, L2 entry, L1 entry, so that a crash leaks
clusters at worst.  Clusters that cannot be written in place (shared with an
internal snapshot, compressed, preallocated zero) are copied to new storage and
their old references released.

What we refuse: encryption, external data files, writing images with extended L2
entries, unknown incompatible features or the corrupt bit (those open read-only),
writing images whose persistent bitmaps are valid (writing would invalidate them).
A dirty image (lazy refcounts after a crash) reads as it is and is repaired (its
references recounted, see :mod:`.check`) when opened for writing.

The operations' hooks: :meth:`Qcow2Image.unmap` makes clusters unallocated or zero
clusters (version 3), :meth:`~Qcow2Image.pack` compacts the file (:mod:`.pack`),
:meth:`~Qcow2Image.resize` grows (moving the L1 table when it must outgrow its
clusters) or shrinks, :meth:`~Qcow2Image.set_parent` rewrites the backing file name
and format, :meth:`~Qcow2Image.check` finds and repairs damage (:mod:`.check`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ...blockmap import (LOOKAHEAD, BlockMap, FlatTable, is_zero, run_length,
                         unit_runs)
from ...errors import (Corrupted, InvalidParameter, InvalidSize, InvalidState, InvalidType,
                       NotSupported, ShrinkNotSupported)
from ...findings import Finding
from ...io import StorageProvider
from ...progress import Progress
from ...sizes import align_up
from ...types import (Capability, ConfigKey, ConfigKeyFlags, ConfigValueType, DiskType,
                      ImageFlags, OpenFlags, Status)
from ..base import (BackendInfo, CreateRequest, ParentLink, SingleFileImage, config_int,
                    relative_parent_path, validate_config)
from . import compression
from .check import Scan, check, repair_scanned
from .header import (AUTOCLEAR_BITMAPS, AUTOCLEAR_OFFSET, COMPAT_LAZY_REFCOUNTS,
                     COMPRESSION_DEFLATE, COMPRESSION_NAMES, COMPRESSION_ZSTD,
                     FEATURE_AUTOCLEAR, FEATURE_COMPATIBLE, FEATURE_INCOMPATIBLE,
                     INCOMPAT_CORRUPT, INCOMPAT_DIRTY, KNOWN_INCOMPATIBLE, MAX_CLUSTER_BITS,
                     MAX_L1_BYTES, REFCOUNT_TABLE_OFFSET, SIZE_OFFSET, Header, backing_cluster,
                     build_header, pack_refcount_table_location, pack_size_and_l1, pack_u64,
                     parse_header, parse_prefix, read_header)
from .l1l2 import (COMPRESSED_KIND, COPIED, NORMAL, UNALLOCATED, ZERO_ALLOC, ZERO_FLAG,
                   ZERO_PLAIN, ClusterMap, Intervals)
from .pack import pack_image
from .refcount import Refcounts, encode_block
from .snapshots import Snapshot, read_snapshots

#: qemu's names for our backends, as a backing format extension stores them.
QEMU_FORMAT_NAMES = {"VDI": "vdi", "VMDK": "vmdk", "VHD": "vpc", "VHDX": "vhdx", "RAW": "raw",
                     "QCOW2": "qcow2", "QCOW": "qcow", "QED": "qed",
                     "PARALLELS": "parallels", "DMG": "dmg"}

DEFAULT_CLUSTER_SIZE = 65536
DEFAULT_REFCOUNT_BITS = 16
_DECOMPRESSED_CACHE = 8
#: Most bytes of clusters copied to new storage at once.
COPY_BATCH = 16 << 20
#: An L2 entry without its COPIED flag.
_NOT_COPIED = np.uint64(COPIED - 1)


def qemu_format_name(backend: str) -> str:
    """The backing format name qemu uses for one of our backends."""
    return QEMU_FORMAT_NAMES.get(backend.upper(), backend.lower())


def _config_str(config: Mapping[str, str], key: str, default: str) -> str:
    for name, value in config.items():
        if name.lower() == key.lower():
            return str(value).strip().lower()
    return default


def _config_bool(config: Mapping[str, str], key: str, path: str) -> bool:
    value = _config_str(config, key, "off")
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise InvalidParameter(f"option {key}={value!r} must be on or off", path)


class Qcow2Image(SingleFileImage):
    """An opened QCOW2 image (version 2 or 3)."""

    info = BackendInfo(
        name="QCOW2",
        description="QEMU Copy-On-Write image, version 2 (compat 0.10) and 3 (compat 1.1)",
        capabilities=(Capability.CREATE_DYNAMIC | Capability.DIFF | Capability.FILE
                      | Capability.ASYNC | Capability.VFS | Capability.DISCARD),
        extensions=(("qcow2", DiskType.HDD),),
        variants=("standard",),
        config_keys=(
            ConfigKey("compat", "1.1", ConfigValueType.STRING, ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("cluster_size", str(DEFAULT_CLUSTER_SIZE), ConfigValueType.INTEGER,
                      ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("refcount_bits", str(DEFAULT_REFCOUNT_BITS), ConfigValueType.INTEGER,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("lazy_refcounts", "off", ConfigValueType.STRING,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
            ConfigKey("compression_type", "zlib", ConfigValueType.STRING,
                      ConfigKeyFlags.EXPERT | ConfigKeyFlags.CREATE_ONLY),
        ),
        image_flags_mask=ImageFlags.DIFF,
        stores=frozenset({"parent_path"}),
        # With the largest clusters (2 MiB): every L1 entry maps 2 MiB * 2 MiB / 8.
        max_size=(MAX_L1_BYTES // 8) << (2 * MAX_CLUSTER_BITS - 3),
    )

    # -- probing and opening ---------------------------------------------------------

    @classmethod
    def probe(cls, io: StorageProvider, path: str, disk_type: DiskType) -> DiskType:
        with io.open(path) as storage:
            parse_prefix(storage.read_at(0, 8), path)
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("QCOW2 images are hard disks", path)
        return DiskType.HDD

    @classmethod
    def open(cls, io: StorageProvider, path: str, flags: OpenFlags,
             disk_type: DiskType = DiskType.HDD,
             config: Mapping[str, str] | None = None) -> Qcow2Image:
        if disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("QCOW2 images are hard disks", path)
        if not flags & OpenFlags.READONLY:
            # Refuse before taking the write lock of an image we must not write.
            with io.open(path) as storage:
                cls._check_header_for_writing(read_header(storage, path), path)
        return super().open(io, path, flags, disk_type, config)

    def _load(self) -> None:
        storage, path = self.storage, self.path
        self.header = h = read_header(storage, path)
        cs, cb = h.cluster_size, h.cluster_bits
        self.snapshots: list[Snapshot] = []
        snapshot_bytes = 0
        if h.nb_snapshots:
            self.snapshots, snapshot_bytes = read_snapshots(
                storage, h.snapshots_offset, h.nb_snapshots, cs, path)

        def clusters(offset: int, length: int) -> tuple[int, int]:
            return offset >> cb, -(-(offset + length) // cs)

        ranges = [(0, 1, "header"),
                  (*clusters(h.l1_table_offset, h.l1_size * 8), "L1 table"),
                  (*clusters(h.refcount_table_offset, h.refcount_table_clusters * cs),
                   "refcount table")]
        if snapshot_bytes:
            ranges.append((*clusters(h.snapshots_offset, snapshot_bytes), "snapshot table"))
        for snap in self.snapshots:
            ranges.append((*clusters(snap.l1_table_offset, snap.l1_size * 8),
                           f"L1 table of snapshot {snap.id}"))
        self._static_metadata = Intervals(ranges)
        self.map = ClusterMap(storage, h, path, self._static_metadata)
        unit = self.map.unit_size
        self._status_map = BlockMap(storage, unit, h.size, self._status_lookup)
        self._read_map = BlockMap(storage, unit, h.size, self._read_lookup)
        self.refcounts: Refcounts | None = None
        self._guard = self._static_metadata
        self._decompressed: dict[int, bytes] = {}
        self._compress_tail: int | None = None

    # -- preparing to write ------------------------------------------------------------

    @staticmethod
    def _check_header_for_writing(h: Header, path: str) -> None:
        unknown = h.incompatible_features & ~KNOWN_INCOMPATIBLE
        if unknown:
            raise NotSupported(f"the image uses incompatible features this program does not "
                               f"know ({h.describe_features(FEATURE_INCOMPATIBLE, unknown)}); "
                               f"it can only be opened read-only", path)
        if h.incompatible_features & INCOMPAT_CORRUPT:
            raise Corrupted("qemu marked the image corrupt; it can only be opened read-only "
                            "until repaired (qemu-img check -r all)", path)
        if h.extended_l2:
            raise NotSupported("writing images with extended L2 entries (subclusters) is not "
                               "supported; open the image read-only or convert it", path)
        bitmaps = h.bitmaps()
        if bitmaps and bitmaps["nb_bitmaps"] and h.autoclear_features & AUTOCLEAR_BITMAPS:
            raise NotSupported(f"the image has {bitmaps['nb_bitmaps']} persistent dirty "
                               f"bitmap(s), which writing without updating them would "
                               f"invalidate; remove them first (qemu-img bitmap --remove) or "
                               f"open the image read-only", path)

    def _start_writing(self) -> None:
        """Checks and repairs before the first write of a read/write open."""
        h = self.header
        self._check_header_for_writing(h, self.path)
        if h.incompatible_features & INCOMPAT_DIRTY:
            self._repair_dirty()
            h = self.header
        self.refcounts = Refcounts(self.storage, h.cluster_bits, h.refcount_order,
                                   h.refcount_table_offset, h.refcount_table_clusters,
                                   self._table_moved, self._in_use)
        self._build_guard()
        if h.version >= 3 and h.autoclear_features:
            # Autoclear bits we do not maintain must be cleared by any writer.
            h.autoclear_features = 0
            self.storage.write_at(AUTOCLEAR_OFFSET, pack_u64(0))
            self.storage.flush()

    def _repair_dirty(self) -> None:
        """Recount the references of an image left dirty (lazy refcounts, then a
        crash) and fix what the count shows, as qemu does when it opens one."""
        scan = Scan(self.storage, self.path).run()
        if scan.fixable:
            repair_scanned(scan)
        self._load()
        if self.header.incompatible_features & INCOMPAT_DIRTY:
            problem = next((f.what for f in scan.findings if not f.fix), "unknown damage")
            raise Corrupted(f"the image is marked dirty and its refcounts cannot be rebuilt "
                            f"({problem}); it can only be opened read-only", self.path)

    def _build_guard(self) -> None:
        """Metadata that allocation and in-place writes must never touch: the fixed
        structures plus the refcount blocks and the active L2 tables."""
        assert self.refcounts is not None
        ranges = list(self._static_metadata.labelled)
        for what, clusters in (("a refcount block", self.refcounts.block_clusters()),
                               ("an L2 table", self.map.active_l2_clusters())):
            # Writing through a table that overlaps other metadata would damage it.
            clash = Intervals(ranges).contains(clusters)
            if clash.any():
                cluster = int(clusters[np.flatnonzero(clash)[0]])
                raise Corrupted(f"{what} (cluster {cluster}) overlaps the "
                                f"{Intervals(ranges).label(cluster)}; the image can only be "
                                f"opened read-only", self.path)
            ranges += [(c, c + 1, what) for c in clusters.tolist()]
        self._guard = Intervals(ranges)

    def _in_use(self, first: int, count: int) -> str | None:
        return self._guard.overlap(first, count)

    def _set_static_range(self, label: str, offset: int, clusters: int) -> None:
        """A fixed structure (the L1 or refcount table) moved to ``offset``."""
        cb = self.header.cluster_bits
        ranges = [r for r in self._static_metadata.labelled if r[2] != label]
        ranges.append((offset >> cb, (offset >> cb) + clusters, label))
        self.map.static_metadata = self._static_metadata = Intervals(ranges)
        if self.refcounts is not None:
            self._build_guard()

    def _set_refcount_table_range(self, offset: int, clusters: int) -> None:
        self._set_static_range("refcount table", offset, clusters)

    def _table_moved(self, offset: int, clusters: int) -> None:
        """The refcount table moved: switch the header to it in one write."""
        self.storage.write_at(REFCOUNT_TABLE_OFFSET,
                              pack_refcount_table_location(offset, clusters))
        self.header.refcount_table_offset = offset
        self.header.refcount_table_clusters = clusters
        self._set_refcount_table_range(offset, clusters)

    def set_open_flags(self, flags: OpenFlags) -> None:
        becoming_writable = self.read_only and not flags & OpenFlags.READONLY
        if becoming_writable:
            self._check_header_for_writing(self.header, self.path)
        super().set_open_flags(flags)

    # -- lookups for the block maps ----------------------------------------------------

    def _status_lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        return self.map.states(first, count, reading=False)

    def _read_lookup(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        # Compressed units read as zeros here and are filled in by read_into.
        return self.map.states(first, count, reading=True)

    # -- reading -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.header.size

    def block_status(self, offset: int, length: int) -> tuple[Status, int]:
        return self._status_map.block_status(offset, length)

    def read_into(self, offset: int, buf: memoryview) -> None:
        unit = self.map.unit_size
        end = offset + len(buf)
        pos = offset
        while pos < end:
            first = pos // unit
            count = min((end - 1) // unit - first + 1, LOOKAHEAD)
            stop = min((first + count) * unit, end)
            self._read_map.read_into(pos, buf[pos - offset:stop - offset])
            kinds, _, _, entries = self.map.lookup(first, count)
            for i in np.flatnonzero(kinds == COMPRESSED_KIND).tolist():
                a, b = max((first + i) * unit, pos), min((first + i + 1) * unit, stop)
                cluster = self._decompress(int(entries[i]))
                # Offset in the cluster: the subcluster's place (extended L2) and the
                # part of the unit the read starts at.
                at = ((first + i) & ((1 << self.map.unit_shift) - 1)) * unit \
                    + a - (first + i) * unit
                buf[a - offset:b - offset] = cluster[at:at + b - a]
            pos = stop

    def _decompress(self, entry: int) -> bytes:
        data = self._decompressed.get(entry)
        if data is None:
            cs = self.header.cluster_size
            offset, length = self.map.compressed_location(entry)
            if offset < cs:
                raise Corrupted(f"a compressed cluster's data is said to start at {offset:#x}, "
                                f"inside the header", self.path)
            raw = self.storage.read_at(offset, length)
            if not raw:
                raise Corrupted(f"a compressed cluster at {offset:#x} lies beyond the end of "
                                f"the file", self.path)
            data = compression.decompress(raw, cs, self.header.compression_type, self.path)
            if len(self._decompressed) >= _DECOMPRESSED_CACHE:
                self._decompressed.pop(next(iter(self._decompressed)))
            self._decompressed[entry] = data
        return data

    # -- writing -----------------------------------------------------------------------

    @property
    def allocation_unit(self) -> int:
        return self.header.cluster_size

    def _refcounts(self) -> Refcounts:
        self.check_writable()
        if self.refcounts is None:  # pragma: no cover - set by every read/write open
            raise InvalidState("internal error: the refcounts are not loaded", self.path)
        return self.refcounts

    def write(self, offset: int, data: memoryview) -> None:
        """Write where storage exists: in place where the cluster is ours alone,
        otherwise copy the cluster to new storage first."""
        self._refcounts()
        cs = self.header.cluster_size
        end = offset + len(data)
        pos = offset
        while pos < end:
            first = pos // cs
            count = min((end - 1) // cs - first + 1, LOOKAHEAD)
            kinds, offsets, writable, _ = self.map.lookup(first, count)
            if np.any((kinds == UNALLOCATED) | (kinds == ZERO_PLAIN)):
                raise InvalidState(f"internal error: in-place write to an unallocated range "
                                   f"near {pos}", self.path)
            in_place = (kinds == NORMAL) & writable
            i = 0
            while i < count and pos < end:
                j = i + run_length(in_place, i)
                stop = min((first + j) * cs, end)
                if in_place[i]:
                    hosts = offsets[i:j] >> self.header.cluster_bits
                    clash = self._guard.contains(hosts)
                    if clash.any():
                        cluster = int(hosts[np.flatnonzero(clash)[0]])
                        raise Corrupted(f"refusing to write guest data over the "
                                        f"{self._guard.label(cluster)} (cluster {cluster}) "
                                        f"an L2 entry points to", self.path)
                    self._status_map.write(pos, data[pos - offset:stop - offset])
                else:
                    # Copy in bounded pieces: the cluster contents are held in memory.
                    step = max(1, COPY_BATCH // cs)
                    for k in range(i, j, step):
                        a = max(pos, (first + k) * cs)
                        b = min(stop, (first + min(k + step, j)) * cs)
                        self._copy_and_write(first + k, min(step, j - k), a,
                                             data[a - offset:b - offset])
                pos, i = stop, j

    def _copy_and_write(self, first: int, count: int, pos: int, piece: memoryview) -> None:
        """Give ``count`` clusters new storage holding their old content overlaid with
        ``piece`` (at guest offset ``pos``)."""
        cs = self.header.cluster_size
        start = first * cs
        buf = bytearray(count * cs)
        view = memoryview(buf)
        have = min(count * cs, self.size - start)
        if not (pos == start and len(piece) >= have):
            self.read_into(start, view[:have])
        view[pos - start:pos - start + len(piece)] = piece
        self._store(first, view, not self.open_flags & OpenFlags.HONOR_ZEROES)

    def write_blocks(self, offset: int, data: memoryview) -> None:
        """Allocate whole clusters (all-zero ones become zero clusters in version 3)."""
        self._refcounts()
        self._store(offset // self.header.cluster_size, data,
                    not self.open_flags & OpenFlags.HONOR_ZEROES)

    def _zero_entry(self) -> int | None:
        """The L2 entry for an all-zero cluster, None where zeros must be written."""
        if self.header.version >= 3:
            return ZERO_FLAG
        return None if self.header.backing_file else 0

    def _store(self, first: int, data: memoryview, detect_zero: bool) -> None:
        cs, cb = self.header.cluster_size, self.header.cluster_bits
        refcounts = self._refcounts()
        zero_entry = self._zero_entry() if detect_zero else None

        def produce(k: int, chunk: memoryview) -> np.ndarray:
            new = np.empty(k, dtype=np.uint64)
            for start, count, zero in unit_runs(chunk, cs, zero_entry is not None):
                if zero:
                    new[start:start + count] = zero_entry
                    continue
                host = refcounts.reserve(count)
                self.storage.write_at(host * cs, chunk[start * cs:(start + count) * cs])
                refcounts.increment(host, count)
                new[start:start + count] = (np.arange(host, host + count, dtype=np.uint64)
                                            << np.uint64(cb)) | np.uint64(COPIED)
            return new

        self._update(first, len(data) // cs, lambda i, k: produce(k, data[i * cs:(i + k) * cs]))

    def _update(self, first: int, count: int,
                produce: Callable[[int, int], np.ndarray]) -> None:
        """Replace the L2 entries of clusters ``first..first+count-1``.

        ``produce(i, k)`` returns the new entries of clusters ``first+i ..`` (``k`` of
        them, within one L2 table), having written and counted their data.  The
        entries are then stored, the L1 entry set if the L2 table is new, and the
        old entries' storage released.
        """
        per = self.map.l2_entries
        i = 0
        while i < count:
            index, slot = divmod(first + i, per)
            k = min(count - i, per - slot)
            table, offset, replaced = self._writable_l2(index)
            old = table[slot:slot + k].copy()
            new = produce(i, k)
            table = self.map.l2.modify(offset)
            table[slot:slot + k] = new
            self.map.l2.persist(offset, slot, k)
            if replaced is not None:
                self.map.set_l1(index, offset | COPIED)
                if replaced:
                    self._refcounts().adjust(np.array([replaced >> self.header.cluster_bits]),
                                             -1)
            self._release(old)
            self._decompressed.clear()
            i += k

    def _writable_l2(self, index: int) -> tuple[np.ndarray, int, int | None]:
        """The L2 table of L1 entry ``index``, ours alone.

        Returns ``(table, offset, replaced)``: ``replaced`` is None when the table was
        already writable, else the offset of the table it replaces (0: none), and the
        caller must point the L1 entry at the new table.
        """
        refcounts = self._refcounts()
        cb = self.header.cluster_bits
        old = self.map.l2_table_offset(index)
        if old and self.map.l1_copied(index):
            return self.map.l2.get(old), old, None
        content = None
        if old:
            # Shared with a snapshot (or COPIED missing): copy it, with COPIED on the
            # entries whose cluster is referenced only once.
            content = self.map.l2.get(old).copy()
            kinds, host = self.map.classify(content)
            hosted = (kinds == NORMAL) | (kinds == ZERO_ALLOC)
            content &= np.uint64(~COPIED & 0xFFFFFFFFFFFFFFFF)
            if hosted.any():
                single = refcounts.get_many(host[hosted] >> cb) == 1
                content[np.flatnonzero(hosted)[single]] |= np.uint64(COPIED)
        host_cluster = refcounts.reserve(1)
        offset = host_cluster << cb
        table = self.map.l2.new(offset)
        if content is not None:
            table[:] = content
            self.map.l2.persist(offset, 0, len(table))
        refcounts.increment(host_cluster, 1)
        return table, offset, old

    def _release(self, entries: np.ndarray) -> None:
        """Drop the references the given (replaced) L2 entries held."""
        kinds, host = self.map.classify(entries)
        hosted = (kinds == NORMAL) | (kinds == ZERO_ALLOC)
        clusters = [host[hosted] >> self.header.cluster_bits]
        compressed = entries[kinds == COMPRESSED_KIND]
        if compressed.size:
            clusters.append(self.map.compressed_clusters(compressed))
        released = np.concatenate(clusters)
        if released.size:
            self._refcounts().adjust(released, -1)

    def write_compressed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store whole clusters compressed (for a compressing conversion).

        ``offset`` is cluster aligned and ``data`` covers whole clusters (the last one
        may stop at the end of the disk).  A cluster that does not get smaller is
        stored uncompressed; all-zero clusters become zero clusters as in
        :meth:`write_blocks`.  Streams are packed back to back like qemu's.
        """
        refcounts = self._refcounts()
        cs = self.header.cluster_size
        view = memoryview(data).cast("B")
        if offset % cs or offset < 0 or offset + len(view) > align_up(self.size, cs):
            raise InvalidParameter(f"compressed writes must cover whole clusters inside the "
                                   f"disk (offset {offset}, {len(view)} bytes)", self.path)
        count = -(-len(view) // cs)
        kind = self.header.compression_type
        zero_entry = None if self.open_flags & OpenFlags.HONOR_ZEROES else self._zero_entry()

        def produce(i: int, k: int) -> np.ndarray:
            new = np.empty(k, dtype=np.uint64)
            streams: list[tuple[int, bytes]] = []
            for t in range(k):
                chunk = bytes(view[(i + t) * cs:(i + t + 1) * cs]).ljust(cs, b"\0")
                if zero_entry is not None and is_zero(chunk):
                    new[t] = zero_entry
                    continue
                stream = compression.compress(chunk, kind, self.path)
                if len(stream) >= cs:
                    host = refcounts.reserve(1)
                    self.storage.write_at(host * cs, chunk)
                    refcounts.increment(host, 1)
                    new[t] = (host * cs) | COPIED
                else:
                    streams.append((t, stream))
            if streams:
                places = self._pack_streams([s for _, s in streams])
                for (t, stream), place in zip(streams, places):
                    new[t] = self.map.compressed_entry(place, len(stream))
            return new

        self._update(offset // cs, count, produce)

    def _pack_streams(self, streams: list[bytes]) -> list[int]:
        """Write compressed streams back to back; returns their byte offsets.

        Streams continue after the previous call's last one when the space is
        contiguous; a host cluster takes another stream only while its refcount
        stays within the refcount width.
        """
        refcounts = self._refcounts()
        cs, cb = self.header.cluster_size, self.header.cluster_bits
        limit = refcounts.max_count

        def plan(start: int, start_count: int) -> tuple[list[int], list[int], int]:
            places, touched = [], []
            per_cluster = {start >> cb: start_count}
            pos = start
            for stream in streams:
                if per_cluster.get(pos >> cb, 0) + 1 > limit:
                    pos = ((pos >> cb) + 1) << cb
                places.append(pos)
                for c in range(pos >> cb, ((pos + len(stream) - 1) >> cb) + 1):
                    per_cluster[c] = per_cluster.get(c, 0) + 1
                    touched.append(c)
                pos += len(stream)
            return places, touched, pos

        tail = self._compress_tail
        tail_count = refcounts.get(tail >> cb) if tail is not None and tail % cs else 0
        if tail_count:  # the last stream's cluster is still in use: continue after it
            places, touched, end = plan(tail, tail_count)
            fresh_first = (tail >> cb) + 1
            need = max(0, ((end - 1) >> cb) + 1 - fresh_first)
            got = refcounts.reserve(need) if need else fresh_first
            if got != fresh_first:
                tail = None
        else:
            tail = None
        if tail is None:
            places, touched, end = plan(0, 0)
            need = ((end - 1) >> cb) + 1
            got = refcounts.reserve(need)
            shift = got << cb
            places = [p + shift for p in places]
            touched = [c + got for c in touched]
            end += shift
            region = got << cb
        else:
            region = tail
        packed = bytearray(end - region)
        for place, stream in zip(places, streams):
            packed[place - region:place - region + len(stream)] = stream
        self.storage.write_at(region, packed)
        refcounts.adjust(np.array(touched, dtype=np.int64), 1)
        self._compress_tail = end
        return places

    # -- releasing clusters, compaction, resizing ---------------------------------------

    @property
    def can_mark_zero(self) -> bool:
        return self.header.version >= 3

    def unmap(self, offset: int, length: int, zero: bool) -> None:
        """Make the whole clusters in the range unallocated, or zero clusters.

        Clusters already so are left alone (no L2 table is allocated to say that
        nothing is there); the others' references are dropped as a write drops them.
        """
        self._refcounts()
        if zero and not self.can_mark_zero:
            raise NotSupported("version 2 (compat 0.10) images have no zero clusters",
                               self.path)
        cs, per = self.header.cluster_size, self.map.l2_entries
        end = min(offset + length, self.size)
        pos = -(-offset // cs)
        stop = -(-end // cs) if end == self.size else end // cs
        target = np.uint64(ZERO_FLAG if zero else 0)
        while pos < stop:
            index, slot = divmod(pos, per)
            count = min(stop - pos, per - slot)
            table = self.map.l2_table_offset(index)
            if table:
                entries = self.map.l2.get(table)[slot:slot + count]
                needed = bool(np.any(entries & _NOT_COPIED != target))
            else:
                needed = bool(target)
            if needed:
                self._update(pos, count, lambda i, k: np.full(k, target, dtype=np.uint64))
            pos += count

    def pack(self, progress: Progress | None = None) -> None:
        """Move clusters from the end of the file into free ones and cut the file
        (see :mod:`.pack`)."""
        self._refcounts()
        pack_image(self, progress)

    def resize(self, size: int, progress: Progress | None = None) -> None:
        """Grow, moving the L1 table when it must outgrow its clusters; or shrink
        when no data lies beyond the new end."""
        self._refcounts()
        h = self.header
        needed = -(-size // (h.cluster_size * h.l2_entries))
        if size <= 0 or needed * 8 > MAX_L1_BYTES:
            largest = (MAX_L1_BYTES // 8) * h.cluster_size * h.l2_entries
            raise InvalidSize(f"this QCOW2 image holds 1 byte to {largest} bytes (asked "
                              f"for {size})", self.path)
        if size < h.size:
            self._shrink(size)
        elif size > h.size:
            self._grow(size, needed)
        self._status_map.size = self._read_map.size = size

    def _write_size_and_l1(self, size: int, l1_size: int, l1_offset: int) -> None:
        """Switch disk size and L1 table in one write (one sector), then flush."""
        h = self.header
        h.size, h.l1_size, h.l1_table_offset = size, l1_size, l1_offset
        self.storage.write_at(SIZE_OFFSET, pack_size_and_l1(h))
        self.storage.flush()

    def _grow(self, size: int, needed: int) -> None:
        h, storage, cs = self.header, self.storage, self.header.cluster_size
        old_clusters = -(-h.l1_size * 8 // cs)
        if needed <= h.l1_size:
            self._write_size_and_l1(size, h.l1_size, h.l1_table_offset)
            return
        if h.l1_size and needed * 8 <= old_clusters * cs:
            # The table's last cluster has room: clear the new entries' bytes first.
            storage.write_at(h.l1_table_offset + h.l1_size * 8, bytes((needed - h.l1_size) * 8))
            storage.flush()
            self._write_size_and_l1(size, needed, h.l1_table_offset)
            entries = np.zeros(needed, dtype=">u8")
            entries[:len(self.map.l1)] = self.map.l1.entries
            self.map.l1.entries = entries
            self._set_static_range("L1 table", h.l1_table_offset, -(-needed * 8 // cs))
            return
        # A new, larger table (counted first), then the header switch, then the old
        # table freed: a crash in between leaks one of the two, never loses one.
        refcounts = self._refcounts()
        clusters = -(-needed * 8 // cs)
        first = refcounts.reserve(clusters)
        table = np.zeros(clusters * cs // 8, dtype=">u8")
        table[:h.l1_size] = self.map.l1.entries
        storage.write_at(first * cs, table.tobytes())
        refcounts.increment(first, clusters)
        storage.flush()
        old_first = h.l1_table_offset // cs
        self._write_size_and_l1(size, needed, first * cs)
        if old_clusters:
            refcounts.adjust(np.arange(old_first, old_first + old_clusters, dtype=np.int64), -1)
        self.map.l1 = FlatTable(storage, first * cs, needed, ">u8", "QCOW2 L1 table")
        self._set_static_range("L1 table", first * cs, clusters)

    def _shrink(self, size: int) -> None:
        """Refuse when data lies beyond ``size``; else switch the size first (what
        lies beyond then no longer shows), then drop the zero clusters and L2
        tables beyond it."""
        h, cs, per = self.header, self.header.cluster_size, self.map.l2_entries
        keep = -(-size // cs)
        end = -(-h.size // cs)
        for index in range(keep // per, -(-end // per)):
            table = self.map.l2_table_offset(index)
            if not table:
                continue
            skip = max(0, keep - index * per)
            kinds, _ = self.map.classify(self.map.l2.get(table)[skip:])
            stored = np.flatnonzero((kinds == NORMAL) | (kinds == COMPRESSED_KIND))
            if stored.size:
                at = (index * per + skip + int(stored[0])) * cs
                raise ShrinkNotSupported(f"data is stored beyond the new end (from offset "
                                         f"{at}); shrinking would lose it", self.path)
        if size % cs:
            tail = bytearray(min(keep * cs, h.size) - size)
            status, _ = self.block_status(size, len(tail))
            if status is Status.DATA:
                self.read_into(size, memoryview(tail))
                if any(tail):
                    raise ShrinkNotSupported(f"the last cluster holds data after offset "
                                             f"{size}; shrinking would lose it", self.path)
        self._write_size_and_l1(size, h.l1_size, h.l1_table_offset)
        refcounts = self._refcounts()
        for index in range(-(-keep // per), h.l1_size):
            table = self.map.l2_table_offset(index)
            if not table:
                continue
            entries = self.map.l2.get(table).copy()
            self.map.set_l1(index, 0)
            self.storage.flush()
            # One path to the table (and to everything under it) is gone.
            refcounts.adjust(np.array([table >> h.cluster_bits]), -1)
            self._release(entries)
            self.map.l2.forget(table)
        if keep % per:
            rest = per - keep % per
            table = self.map.l2_table_offset(keep // per)
            if table and self.map.l2.get(table)[keep % per:].any():
                self._update(keep, rest, lambda i, k: np.zeros(k, dtype=np.uint64))

    def check_parent(self, link: ParentLink | None) -> None:
        self._backing_cluster(link)

    def set_parent(self, link: ParentLink | None) -> None:
        """Record a new backing file and format (merge, rebase), or none.

        Both live in the first cluster after the header and its extensions; the
        cluster is rewritten whole, in one transaction.
        """
        self.check_writable()
        cluster = self._backing_cluster(link)
        with self.transaction():
            self.storage.write_at(0, cluster)
        self.header = parse_header(cluster, self.storage.size(), self.path)

    def _backing_cluster(self, link: ParentLink | None) -> bytes:
        raw = self.storage.read_exact(0, self.header.cluster_size, "the QCOW2 header")
        name = relative_parent_path(self.path, link.path) if link else None
        backing_format = qemu_format_name(link.format) if link else None
        return backing_cluster(raw, self.header, name, backing_format, self.path)

    @classmethod
    def check(cls, io: StorageProvider, path: str, repair: bool,
              progress: Progress | None = None) -> list[Finding]:
        """``VDRepair`` for QCOW2 (see :mod:`.check`)."""
        return check(io, path, repair, progress)

    # -- metadata ----------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def image_flags(self) -> ImageFlags:
        return ImageFlags.DIFF if self.header.backing_file else ImageFlags.NONE

    @property
    def parent_filename(self) -> str | None:
        return self.header.backing_file

    @property
    def parent_format(self) -> str | None:
        return self.header.backing_format

    def describe(self) -> list[tuple[str, str]]:
        h = self.header
        cs = h.cluster_size
        l2_tables = len(self.map.active_l2_clusters())
        rows = [
            ("version", f"{h.version} (compat {'1.1' if h.version >= 3 else '0.10'})"),
            ("header length", str(h.header_length)),
            ("cluster size", f"{cs} (cluster_bits {h.cluster_bits})"),
            ("virtual size", str(h.size)),
            ("encryption", "none"),
            ("L1 table", f"offset {h.l1_table_offset:#x}, {h.l1_size} entries"),
            ("L2 tables", f"{l2_tables} allocated, {h.l2_entries} entries each"
                          + (" (extended, 32 subclusters)" if h.extended_l2 else "")),
            ("refcount table", f"offset {h.refcount_table_offset:#x}, "
                               f"{h.refcount_table_clusters} cluster(s)"),
            ("refcount bits", str(h.refcount_bits)),
            ("incompatible features", h.describe_features(FEATURE_INCOMPATIBLE,
                                                          h.incompatible_features)),
            ("compatible features", h.describe_features(FEATURE_COMPATIBLE,
                                                        h.compatible_features)),
            ("autoclear features", h.describe_features(FEATURE_AUTOCLEAR,
                                                       h.autoclear_features)),
            ("compression type", COMPRESSION_NAMES.get(h.compression_type, "?")),
            ("backing file", repr(h.backing_file) if h.backing_file else "none"),
            ("backing format", h.backing_format or "not stored"),
            ("header extensions", ", ".join(
                f"{e.type:#010x} ({e.name}, {len(e.data)} bytes)" for e in h.extensions)
                or "none"),
            ("snapshots", str(len(self.snapshots))),
        ]
        if h.snapshots_offset:
            rows.append(("snapshot table", f"offset {h.snapshots_offset:#x}"))
        for i, snap in enumerate(self.snapshots):
            rows.append((f"snapshot {i}", snap.describe()))
        bitmaps = h.bitmaps()
        if bitmaps:
            rows.append(("bitmaps", f"{bitmaps['nb_bitmaps']}, directory at "
                                    f"{bitmaps['directory_offset']:#x} "
                                    f"({bitmaps['directory_size']} bytes)"))
        return rows

    # -- creation ----------------------------------------------------------------------

    @classmethod
    def create(cls, io: StorageProvider, request: CreateRequest) -> Qcow2Image:
        path, size = request.path, request.size
        validate_config(cls.info, request.config, path)
        if request.image_flags & ImageFlags.FIXED:
            raise InvalidType("QCOW2 images are created dynamically growing only (no "
                              "preallocation)", path)
        if request.disk_type not in (DiskType.INVALID, DiskType.HDD):
            raise InvalidType("QCOW2 images are hard disks", path)
        options = _CreateOptions.parse(request.config, path)
        cb = options.cluster_bits
        cs = 1 << cb
        l1_size = -(-size // (cs * (cs // 8)))
        if size <= 0 or l1_size * 8 > MAX_L1_BYTES:
            largest = (MAX_L1_BYTES // 8) * cs * (cs // 8)
            raise InvalidSize(f"a QCOW2 image with {cs}-byte clusters holds 1 byte to "
                              f"{largest} bytes (asked for {size})", path)
        backing = backing_format = None
        if request.parent is not None:
            backing = relative_parent_path(path, request.parent.path)
            backing_format = qemu_format_name(request.parent.format)

        order = options.refcount_order
        per_block = cs * 8 >> order
        l1_clusters = max(1, -(-l1_size * 8 // cs))
        table_clusters = blocks = 1
        while True:  # the refcount structures must count themselves
            total = 1 + table_clusters + blocks + l1_clusters
            need_blocks = -(-total // per_block)
            need_table = -(-need_blocks * 8 // cs)
            if (need_blocks, need_table) == (blocks, table_clusters):
                break
            blocks, table_clusters = max(blocks, need_blocks), max(table_clusters, need_table)
        first_block = 1 + table_clusters
        l1_offset = (first_block + blocks) * cs
        header = build_header(
            version=options.version, cluster_bits=cb, size=size, l1_size=l1_size,
            l1_table_offset=l1_offset, refcount_table_offset=cs,
            refcount_table_clusters=table_clusters, refcount_order=order,
            compatible_features=COMPAT_LAZY_REFCOUNTS if options.lazy_refcounts else 0,
            compression_type=options.compression_type, backing_file=backing,
            backing_format=backing_format, path=path)
        table = np.zeros(table_clusters * cs // 8, dtype=">u8")
        table[:blocks] = np.arange(first_block, first_block + blocks, dtype=np.uint64) * cs
        counts = np.ones(total, dtype=np.uint64)
        refcount_blocks = b"".join(
            encode_block(counts[b * per_block:(b + 1) * per_block], 1 << order, cs)
            for b in range(blocks))

        storage = io.open(path, create=True)
        try:
            storage.write_at(0, header)
            storage.write_at(cs, table.tobytes())
            storage.write_at(first_block * cs, refcount_blocks)
            storage.set_size(total * cs)  # the L1 table: zeros
            storage.flush()
        finally:
            storage.close()
        return cls.open(io, path, request.open_flags & ~OpenFlags.READONLY, request.disk_type)


class _CreateOptions:
    """The creation options (``-o KEY=VALUE``), validated."""

    def __init__(self, version: int, cluster_bits: int, refcount_order: int,
                 lazy_refcounts: bool, compression_type: int) -> None:
        self.version = version
        self.cluster_bits = cluster_bits
        self.refcount_order = refcount_order
        self.lazy_refcounts = lazy_refcounts
        self.compression_type = compression_type

    @classmethod
    def parse(cls, config: Mapping[str, str], path: str) -> _CreateOptions:
        compat = _config_str(config, "compat", "1.1")
        versions = {"0.10": 2, "v2": 2, "2": 2, "1.1": 3, "v3": 3, "3": 3}
        if compat not in versions:
            raise InvalidParameter(f"compat={compat!r}: use 0.10 (version 2) or 1.1 "
                                   f"(version 3)", path)
        version = versions[compat]
        cluster_size = config_int(config, "cluster_size", DEFAULT_CLUSTER_SIZE, path)
        if cluster_size & (cluster_size - 1) or not 512 <= cluster_size <= 1 << MAX_CLUSTER_BITS:
            raise InvalidParameter(f"cluster_size={cluster_size} must be a power of two from "
                                   f"512 bytes to 2 MiB", path)
        bits = config_int(config, "refcount_bits", DEFAULT_REFCOUNT_BITS, path)
        if bits & (bits - 1) or not 1 <= bits <= 64:
            raise InvalidParameter(f"refcount_bits={bits} must be a power of two from 1 to 64",
                                   path)
        if version == 2 and bits != 16:
            raise InvalidParameter("compat=0.10 images have 16-bit refcounts only", path)
        lazy = _config_bool(config, "lazy_refcounts", path)
        if lazy and version == 2:
            raise InvalidParameter("lazy_refcounts needs compat=1.1", path)
        ctype_name = _config_str(config, "compression_type", "zlib")
        ctypes = {"zlib": COMPRESSION_DEFLATE, "deflate": COMPRESSION_DEFLATE,
                  "zstd": COMPRESSION_ZSTD}
        if ctype_name not in ctypes:
            raise InvalidParameter(f"compression_type={ctype_name!r}: use zlib or zstd", path)
        ctype = ctypes[ctype_name]
        if ctype and version == 2:
            raise InvalidParameter("compression_type=zstd needs compat=1.1", path)
        return cls(version, cluster_size.bit_length() - 1, bits.bit_length() - 1, lazy, ctype)
