"""QCOW2 header and header extensions: parsing, validation, building, field updates.

Cluster 0 holds a big-endian header (72 bytes in version 2, ``header_length``
bytes in version 3), then header extensions (type, length, data padded to 8 bytes,
ended by type 0) and the backing file name.  Feature bits of version 3 tell a
reader what it must understand (incompatible), may ignore (compatible) or must
clear when it writes without understanding them (autoclear).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ...errors import Corrupted, InvalidHeader, InvalidParameter, NotSupported
from ...io import Storage
from ...layout import Layout, c_string

MAGIC = b"QFI\xfb"

HEADER_V2 = Layout("QCOW2 header", ">", [
    ("magic", "4s"), ("version", "I"), ("backing_file_offset", "Q"),
    ("backing_file_size", "I"), ("cluster_bits", "I"), ("size", "Q"),
    ("crypt_method", "I"), ("l1_size", "I"), ("l1_table_offset", "Q"),
    ("refcount_table_offset", "Q"), ("refcount_table_clusters", "I"),
    ("nb_snapshots", "I"), ("snapshots_offset", "Q")])

HEADER_V3 = Layout("QCOW2 version 3 header", ">", [
    ("incompatible_features", "Q"), ("compatible_features", "Q"),
    ("autoclear_features", "Q"), ("refcount_order", "I"), ("header_length", "I")])

V2_HEADER_LENGTH = HEADER_V2.size            # 72
V3_MIN_HEADER_LENGTH = V2_HEADER_LENGTH + HEADER_V3.size  # 104
#: What we write for version 3: the compression type byte plus padding to 8.
V3_HEADER_LENGTH = 112
COMPRESSION_TYPE_OFFSET = 104

#: Offsets of the fields we update in place (each update is one small write).
INCOMPATIBLE_OFFSET = V2_HEADER_LENGTH
AUTOCLEAR_OFFSET = V2_HEADER_LENGTH + HEADER_V3.offset_of("autoclear_features")
REFCOUNT_TABLE_OFFSET = HEADER_V2.offset_of("refcount_table_offset")
#: The disk size, crypt method, L1 size and L1 offset follow each other (bytes 24-47):
#: a resize rewrites them in one write, inside one sector.
SIZE_OFFSET = HEADER_V2.offset_of("size")
SIZE_AND_L1 = struct.Struct(">QIIQ")

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_BACKING_NAME = 1023
FEATURE_TABLE_MIN_CLUSTER = 4096

# qemu's implementation limits; anything larger is refused as hostile.
MAX_L1_BYTES = 32 << 20
MAX_REFTABLE_BYTES = 8 << 20
MAX_SNAPSHOTS = 65536

# Incompatible feature bits.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
KNOWN_INCOMPATIBLE = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE
                      | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)
# Compatible feature bits.
COMPAT_LAZY_REFCOUNTS = 1 << 0
# Autoclear feature bits.
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

FEATURE_INCOMPATIBLE, FEATURE_COMPATIBLE, FEATURE_AUTOCLEAR = 0, 1, 2
FEATURE_KINDS = ("incompatible", "compatible", "autoclear")

#: The feature names the specification defines (written into new images' name table).
STANDARD_FEATURE_NAMES: dict[tuple[int, int], str] = {
    (FEATURE_INCOMPATIBLE, 0): "dirty bit",
    (FEATURE_INCOMPATIBLE, 1): "corrupt bit",
    (FEATURE_INCOMPATIBLE, 2): "external data file",
    (FEATURE_INCOMPATIBLE, 3): "compression type",
    (FEATURE_INCOMPATIBLE, 4): "extended L2 entries",
    (FEATURE_COMPATIBLE, 0): "lazy refcounts",
    (FEATURE_AUTOCLEAR, 0): "bitmaps",
    (FEATURE_AUTOCLEAR, 1): "raw external data",
}

COMPRESSION_DEFLATE = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_DEFLATE: "zlib", COMPRESSION_ZSTD: "zstd"}

# Header extension types.
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441
EXT_NAMES = {
    EXT_BACKING_FORMAT: "backing file format",
    EXT_FEATURE_NAMES: "feature name table",
    EXT_BITMAPS: "bitmaps",
    EXT_CRYPTO: "full disk encryption header pointer",
    EXT_DATA_FILE: "external data file name",
}

EXT_HEADER = struct.Struct(">II")
FEATURE_ENTRY = struct.Struct(">BB46s")
BITMAPS_EXT = Layout("QCOW2 bitmaps extension", ">", [
    ("nb_bitmaps", "I"), ("reserved", "I"), ("directory_size", "Q"),
    ("directory_offset", "Q")])


def align8(value: int) -> int:
    return (value + 7) & ~7


@dataclass
class Extension:
    """One header extension as stored (kept byte for byte)."""

    type: int
    data: bytes
    offset: int

    @property
    def name(self) -> str:
        return EXT_NAMES.get(self.type, "unknown")


@dataclass
class Header:
    """The decoded header of a QCOW2 image (cluster 0)."""

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LENGTH
    compression_type: int = COMPRESSION_DEFLATE
    backing_file: str | None = None
    extensions: list[Extension] = field(default_factory=list)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    @property
    def l2_entries(self) -> int:
        """Entries per L2 table (128-bit entries with extended L2)."""
        return self.cluster_size // (16 if self.extended_l2 else 8)

    def extension(self, type_: int) -> Extension | None:
        for ext in self.extensions:
            if ext.type == type_:
                return ext
        return None

    @property
    def backing_format(self) -> str | None:
        ext = self.extension(EXT_BACKING_FORMAT)
        return c_string(ext.data) if ext else None

    @property
    def data_file(self) -> str | None:
        ext = self.extension(EXT_DATA_FILE)
        return c_string(ext.data) if ext else None

    @property
    def feature_names(self) -> dict[tuple[int, int], str]:
        """(kind, bit) -> name from the image's feature name table (may be absent)."""
        ext = self.extension(EXT_FEATURE_NAMES)
        names: dict[tuple[int, int], str] = {}
        if ext:
            for pos in range(0, len(ext.data) - FEATURE_ENTRY.size + 1, FEATURE_ENTRY.size):
                kind, bit, name = FEATURE_ENTRY.unpack_from(ext.data, pos)
                names[(kind, bit)] = c_string(name)
        return names

    def bitmaps(self) -> dict[str, int] | None:
        ext = self.extension(EXT_BITMAPS)
        if ext is None or len(ext.data) < BITMAPS_EXT.size:
            return None
        return BITMAPS_EXT.unpack(ext.data)

    def describe_features(self, kind: int, mask: int) -> str:
        """``mask`` as a list of bit names (the image's table, then the standard names)."""
        if not mask:
            return "none"
        names = {**STANDARD_FEATURE_NAMES, **self.feature_names}
        parts = []
        for bit in range(64):
            if mask >> bit & 1:
                name = names.get((kind, bit))
                parts.append(f"bit {bit}" + (f" ({name})" if name else ""))
        return f"{mask:#x}: " + ", ".join(parts)


def _bad(message: str, path: str) -> Corrupted:
    return Corrupted(message, path, status="VERR_VD_GEN_INVALID_HEADER")


def parse_prefix(raw: bytes, path: str) -> int:
    """Check magic and version of the first bytes; return the version.

    Not QCOW2 at all (or QCOW version 1) raises :class:`InvalidHeader`; an unknown
    version of this format raises :class:`NotSupported` (the file is ours, unusable).
    """
    if len(raw) < 8 or raw[:4] != MAGIC:
        raise InvalidHeader("not a QCOW2 image (no QCOW magic)", path)
    version = struct.unpack_from(">I", raw, 4)[0]
    if version == 1:
        raise InvalidHeader("a QCOW version 1 image, not QCOW2", path)
    if version not in (2, 3):
        raise NotSupported(f"QCOW2 version {version} is not supported (only 2 and 3)", path)
    return version


def read_header(storage: Storage, path: str) -> Header:
    """Read and validate the header and extensions of the image in ``storage``."""
    first = storage.read_at(0, V3_HEADER_LENGTH)
    parse_prefix(first, path)
    bits = struct.unpack_from(">I", first, 20)[0] if len(first) >= 24 else 0
    raw = storage.read_at(0, 1 << bits) if MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS \
        else first
    header = parse_header(raw, storage.size(), path)
    if header.incompatible_features & INCOMPAT_DATA_FILE:
        raise NotSupported(f"the image keeps its data in an external data file "
                           f"({header.data_file or 'name not stored'!r}), which is not "
                           f"supported", path)
    return header


def parse_header(raw: bytes, file_size: int, path: str) -> Header:
    """Decode and validate cluster 0 (``raw`` is at least the header, at most a cluster)."""
    version = parse_prefix(raw, path)
    h = HEADER_V2.unpack(raw, 0, path)
    del h["magic"]
    header = Header(**h)
    cb = header.cluster_bits
    if not MIN_CLUSTER_BITS <= cb <= MAX_CLUSTER_BITS:
        raise _bad(f"cluster_bits {cb} is out of range (clusters of 512 bytes to 2 MiB, "
                   f"bits 9 to 21)", path)
    cs = header.cluster_size
    if version == 3:
        for name, value in HEADER_V3.unpack(raw, V2_HEADER_LENGTH, path).items():
            setattr(header, name, value)
        if header.header_length < V3_MIN_HEADER_LENGTH or header.header_length > cs:
            raise _bad(f"header_length {header.header_length} is invalid (at least "
                       f"{V3_MIN_HEADER_LENGTH}, at most a cluster)", path)
        if len(raw) < header.header_length:
            raise Corrupted(f"the QCOW2 header is cut short ({len(raw)} of "
                            f"{header.header_length} bytes)", path)
        if header.header_length > COMPRESSION_TYPE_OFFSET:
            header.compression_type = raw[COMPRESSION_TYPE_OFFSET]
    _validate(header, file_size, path)
    header.extensions = _parse_extensions(raw, header, path)
    if header.backing_file_offset:
        start, length = header.backing_file_offset, header.backing_file_size
        header.backing_file = raw[start:start + length].decode("utf-8", "surrogateescape")
    return header


def _validate(h: Header, file_size: int, path: str) -> None:
    cs = h.cluster_size
    if h.refcount_order > 6:
        raise NotSupported(f"refcount_order {h.refcount_order} ({1 << min(h.refcount_order, 30)}"
                           f"-bit refcounts) is not valid (at most 6: 64 bits)", path)
    if h.crypt_method:
        kind = {1: "AES", 2: "LUKS"}.get(h.crypt_method, f"method {h.crypt_method}")
        raise NotSupported(f"the image is encrypted ({kind}); encrypted QCOW2 images are not "
                           f"supported", path)
    ctype = h.compression_type
    if ctype not in COMPRESSION_NAMES:
        raise NotSupported(f"unknown compression type {ctype}", path)
    if bool(ctype) != bool(h.incompatible_features & INCOMPAT_COMPRESSION):
        raise _bad(f"compression type {ctype} and the compression type feature bit disagree",
                   path)
    if h.extended_l2 and h.cluster_bits < 14:
        raise _bad("extended L2 entries need clusters of at least 16 KiB", path)
    if h.backing_file_offset:
        if h.backing_file_size > MAX_BACKING_NAME:
            raise _bad(f"the backing file name is {h.backing_file_size} bytes long "
                       f"(at most {MAX_BACKING_NAME})", path)
        if h.backing_file_offset + h.backing_file_size > cs:
            raise _bad("the backing file name does not lie in the first cluster", path)
    if h.l1_size * 8 > MAX_L1_BYTES:
        raise NotSupported(f"the L1 table has {h.l1_size} entries, more than the "
                           f"{MAX_L1_BYTES // 8} qemu allows", path)
    coverage = cs * h.l2_entries
    needed = -(-h.size // coverage)
    if h.l1_size < needed:
        raise _bad(f"the L1 table ({h.l1_size} entries) is too small for a disk of "
                   f"{h.size} bytes ({needed} needed)", path)
    _check_area(h.l1_table_offset, h.l1_size * 8, "L1 table", h, file_size, path)
    if h.refcount_table_clusters * cs > MAX_REFTABLE_BYTES:
        raise NotSupported(f"the refcount table has {h.refcount_table_clusters} clusters, more "
                           f"than qemu allows", path)
    if not h.refcount_table_clusters:
        raise _bad("the refcount table is empty", path)
    _check_area(h.refcount_table_offset, h.refcount_table_clusters * cs, "refcount table",
                h, file_size, path)
    if h.nb_snapshots > MAX_SNAPSHOTS:
        raise _bad(f"the image claims {h.nb_snapshots} snapshots (at most {MAX_SNAPSHOTS})",
                   path)
    if h.nb_snapshots:
        _check_area(h.snapshots_offset, 40 * h.nb_snapshots, "snapshot table", h, file_size,
                    path)


def _check_area(offset: int, length: int, what: str, h: Header, file_size: int,
                path: str) -> None:
    """A metadata structure must be cluster aligned, after cluster 0 and inside the file."""
    if not length:
        return
    if offset % h.cluster_size:
        raise _bad(f"the {what} offset {offset:#x} is not aligned to a cluster", path)
    if offset < h.cluster_size:
        raise _bad(f"the {what} offset {offset:#x} overlaps the header", path)
    if offset + length > file_size:
        raise Corrupted(f"the {what} ({length} bytes at {offset:#x}) lies beyond the end of "
                        f"the file ({file_size} bytes)", path)


def _parse_extensions(raw: bytes, h: Header, path: str) -> list[Extension]:
    """The extensions between the header and the backing name (or the cluster end)."""
    pos = h.header_length
    end = h.backing_file_offset or h.cluster_size
    end = min(end, len(raw))
    found: list[Extension] = []
    while pos + EXT_HEADER.size <= end:
        type_, length = EXT_HEADER.unpack_from(raw, pos)
        if type_ == EXT_END:
            break
        start = pos + EXT_HEADER.size
        if start + length > end:
            raise _bad(f"header extension {type_:#010x} ({length} bytes at {pos:#x}) runs "
                       f"past the end of the header area", path)
        found.append(Extension(type_, bytes(raw[start:start + length]), pos))
        pos = start + align8(length)
    return found


# -- building new headers --------------------------------------------------------------

def feature_table(entries: dict[tuple[int, int], str] = STANDARD_FEATURE_NAMES) -> bytes:
    return b"".join(FEATURE_ENTRY.pack(kind, bit, name.encode())
                    for (kind, bit), name in entries.items())


def _extension(type_: int, data: bytes) -> bytes:
    return EXT_HEADER.pack(type_, len(data)) + data + bytes(align8(len(data)) - len(data))


def build_header(*, version: int, cluster_bits: int, size: int, l1_size: int,
                 l1_table_offset: int, refcount_table_offset: int,
                 refcount_table_clusters: int, refcount_order: int,
                 compatible_features: int = 0, compression_type: int = COMPRESSION_DEFLATE,
                 backing_file: str | None = None, backing_format: str | None = None,
                 path: str = "") -> bytes:
    """Cluster 0 of a new image: header, extensions, backing name (at most a cluster)."""
    cs = 1 << cluster_bits
    name = backing_file.encode("utf-8", "surrogateescape") if backing_file else b""
    if len(name) > MAX_BACKING_NAME:
        raise InvalidParameter(f"the backing file name is {len(name)} bytes long; QCOW2 "
                               f"stores at most {MAX_BACKING_NAME}", path)
    header_length = V3_HEADER_LENGTH if version == 3 else V2_HEADER_LENGTH
    exts = b""
    if backing_format:
        exts += _extension(EXT_BACKING_FORMAT, backing_format.encode())
    # Like qemu 7.2, leave the optional name table out of clusters of 4 KiB and less
    # (it keeps the room for backing file names), and out of any it does not fit.
    table = _extension(EXT_FEATURE_NAMES, feature_table()) \
        if version == 3 and cs > FEATURE_TABLE_MIN_CLUSTER else b""
    end = EXT_HEADER.pack(EXT_END, 0)
    if header_length + len(exts) + len(table) + len(end) + len(name) > cs:
        table = b""
    tail = exts + table + end
    if header_length + len(tail) + len(name) > cs:
        raise InvalidParameter(f"the backing file name does not fit in the first cluster "
                               f"({cs} bytes); use a larger cluster size", path)
    values = dict(
        magic=MAGIC, version=version,
        backing_file_offset=header_length + len(tail) if name else 0,
        backing_file_size=len(name), cluster_bits=cluster_bits, size=size, crypt_method=0,
        l1_size=l1_size, l1_table_offset=l1_table_offset,
        refcount_table_offset=refcount_table_offset,
        refcount_table_clusters=refcount_table_clusters, nb_snapshots=0, snapshots_offset=0)
    raw = HEADER_V2.pack(values)
    if version == 3:
        raw += HEADER_V3.pack(dict(
            incompatible_features=INCOMPAT_COMPRESSION if compression_type else 0,
            compatible_features=compatible_features, autoclear_features=0,
            refcount_order=refcount_order, header_length=header_length))
        raw += bytes([compression_type]) + bytes(header_length - COMPRESSION_TYPE_OFFSET - 1)
    return raw + tail + name


def backing_cluster(raw: bytes, h: Header, backing_file: str | None,
                    backing_format: str | None, path: str) -> bytes:
    """Cluster 0 rewritten to name another backing file (or none), whole.

    The header bytes are kept as they are but for the backing name's offset and
    length; the extensions are kept byte for byte (a backing format extension is
    replaced or dropped).  When the new name does not fit, the optional feature
    name table goes first; if it still does not fit, InvalidParameter.
    """
    cs = h.cluster_size
    name = backing_file.encode("utf-8", "surrogateescape") if backing_file else b""
    if len(name) > MAX_BACKING_NAME:
        raise InvalidParameter(f"the backing file name is {len(name)} bytes long; QCOW2 "
                               f"stores at most {MAX_BACKING_NAME}", path)
    kept = [e for e in h.extensions if e.type != EXT_BACKING_FORMAT]
    if name and backing_format:
        kept.insert(0, Extension(EXT_BACKING_FORMAT, backing_format.encode(), 0))
    end = EXT_HEADER.pack(EXT_END, 0)

    def tail(extensions: list[Extension]) -> bytes:
        return b"".join(_extension(e.type, e.data) for e in extensions) + end

    exts = tail(kept)
    if h.header_length + len(exts) + len(name) > cs:
        exts = tail([e for e in kept if e.type != EXT_FEATURE_NAMES])
    room = cs - h.header_length - len(exts)
    if len(name) > room:
        raise InvalidParameter(f"the backing file name ({len(name)} bytes) does not fit in "
                               f"the image's first cluster ({room} bytes are free there); "
                               f"use a shorter path (or relative names)", path)
    head = bytearray(raw[:h.header_length])
    struct.pack_into(">QI", head, HEADER_V2.offset_of("backing_file_offset"),
                     h.header_length + len(exts) if name else 0, len(name))
    cluster = bytes(head) + exts + name
    return cluster + bytes(cs - len(cluster))


def pack_u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def pack_size_and_l1(h: Header) -> bytes:
    """Bytes for header offset 24: disk size, crypt method, L1 size and offset."""
    return SIZE_AND_L1.pack(h.size, h.crypt_method, h.l1_size, h.l1_table_offset)


def pack_refcount_table_location(offset: int, clusters: int) -> bytes:
    """Bytes for header offset 48: refcount table offset and size, written as one."""
    return struct.pack(">QI", offset, clusters)
