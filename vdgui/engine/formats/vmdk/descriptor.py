"""The VMDK descriptor: the text that names a disk's extents and holds its metadata.

A descriptor has three parts, in this order: header keys (``version``, ``CID``,
``parentCID``, ``createType``, ``parentFileNameHint``), extent lines
(``ACCESS SECTORS TYPE ["FILE" [OFFSET]]``) and the disk database (``ddb.*`` keys,
after a ``#DDB`` comment).  :class:`Descriptor` keeps every line of the text it
parsed, so rewriting it (a new CID, a new UUID) preserves comments, key order and
keys this program does not know.

Text is decoded as UTF-8 with ``surrogateescape``: bytes that are not UTF-8 (an
old Latin-1 comment, say) survive a rewrite unchanged.  :func:`read_descriptor`
finds a file's descriptor: the whole file, or the area a sparse extent reserves
for it (text up to the first NUL).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ...errors import Corrupted, InvalidHeader, NotSupported
from ...io import Storage, StorageProvider
from ...types import SECTOR
from .sparse import COWD_MAGIC, MAGIC, SparseHeader

#: Largest descriptor read (qemu reads at most 1 MiB; VMware's are a few KiB).
MAX_DESCRIPTOR_BYTES = 1 << 20
#: Most lines accepted (a 2 TiB image split in 2 GiB extents needs about 1100).
MAX_LINES = 20000
#: Largest extent accepted, in sectors (2**50 sectors = 512 PiB): anything bigger
#: is hostile input, and would overflow the 64-bit file offsets it implies.
MAX_EXTENT_SECTORS = 1 << 50

ACCESS_MODES = ("RW", "RDONLY", "NOACCESS")
EXTENT_TYPES = ("SPARSE", "FLAT", "ZERO", "VMFS", "VMFSSPARSE", "VMFSRDM", "VMFSRAW",
                "SESPARSE")

#: ``parentCID`` of an image without a parent.
NO_PARENT_CID = 0xFFFFFFFF

#: DDB keys of the UUIDs VirtualBox keeps (qemu and VMware ignore them).
UUID_KEYS = {"uuid": "ddb.uuid.image", "modification": "ddb.uuid.modification",
             "parent": "ddb.uuid.parent", "parent_modification": "ddb.uuid.parentmodification"}
PCHS_KEYS = ("ddb.geometry.cylinders", "ddb.geometry.heads", "ddb.geometry.sectors")
LCHS_KEYS = ("ddb.geometry.biosCylinders", "ddb.geometry.biosHeads",
             "ddb.geometry.biosSectors")

#: Header keys written without quotes (what VMware, VirtualBox and qemu do).
_UNQUOTED_HEADER_KEYS = {"version", "cid", "parentcid"}

_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)'
                     r'(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")

_STATUS = "VERR_VD_VMDK_INVALID_HEADER"
_NOT_FOUND = "VERR_VD_VMDK_VALUE_NOT_FOUND"


def decode(raw: bytes) -> str:
    """Descriptor bytes as text (round-trips any byte)."""
    return raw.decode("utf-8", errors="surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def encode_comment(text: str) -> str:
    """``ddb.comment`` escaping (VirtualBox's): backslash and newline as ``\\\\``/``\\n``."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def decode_comment(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "\\n":
            out.append("\n" if text[i + 1] == "n" else "\\")
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class ExtentLine:
    """One line of the extent description."""

    access: str
    sectors: int
    type: str
    filename: str | None = None
    #: FLAT extents: the sector in the file where the extent's data starts.
    offset: int = 0

    def render(self) -> str:
        if self.type == "ZERO" or self.filename is None:
            return f"{self.access} {self.sectors} {self.type}"
        line = f'{self.access} {self.sectors} {self.type} "{self.filename}"'
        if self.type == "FLAT":
            line += f" {self.offset}"
        return line


@dataclass
class _Line:
    """A line of the descriptor as it was read (or built)."""

    text: str
    kind: str  # "comment", "header", "extent" or "ddb"
    key: str | None = None
    value: str | None = None
    quoted: bool = False
    extent: ExtentLine | None = None


def looks_like_descriptor(head: bytes) -> bool:
    """True when ``head`` (the start of a file) is a VMDK text descriptor.

    The first non-blank line is ``# Disk DescriptorFile``, or the first line that
    is not blank and not a comment is ``version=N`` (what qemu accepts).
    """
    if b"\0" in head[:64]:
        return False
    text = head.decode("latin-1")
    for line in text.split("\n")[:200]:
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.lower().startswith("# disk descriptorfile"):
            return True
        if stripped.startswith("#"):
            continue
        return re.match(r"^version\s*=\s*\"?\d+\"?$", stripped) is not None
    return False


class Descriptor:
    """A parsed descriptor that can be changed and written back."""

    def __init__(self, lines: list[_Line]) -> None:
        self._lines = lines

    # -- reading --------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> Descriptor:
        """Parse descriptor text; malformed lines raise :class:`Corrupted`."""
        if len(text) > MAX_DESCRIPTOR_BYTES:
            raise NotSupported(f"the VMDK descriptor is {len(text)} bytes long, more than "
                               f"the {MAX_DESCRIPTOR_BYTES} this program accepts", path,
                               status=_STATUS)
        raw_lines = text.split("\n")
        if raw_lines and raw_lines[-1] == "":
            raw_lines.pop()
        if len(raw_lines) > MAX_LINES:
            raise NotSupported(f"the VMDK descriptor has {len(raw_lines)} lines, more than "
                               f"the {MAX_LINES} this program accepts", path, status=_STATUS)
        lines = [cls._parse_line(raw.rstrip("\r"), number, path)
                 for number, raw in enumerate(raw_lines, 1)]
        descriptor = cls(lines)
        if descriptor.get("createType") is None and not descriptor.extents:
            raise Corrupted("the VMDK descriptor has neither a createType nor any extent",
                            path, status=_STATUS)
        return descriptor

    @staticmethod
    def _parse_line(text: str, number: int, path: str | None) -> _Line:
        stripped = text.strip()

        def bad(why: str) -> Corrupted:
            shown = stripped if len(stripped) <= 80 else stripped[:77] + "..."
            return Corrupted(f"line {number} of the VMDK descriptor is malformed ({why}): "
                             f"{shown!r}", path, status=_STATUS)

        if not stripped or stripped.startswith("#"):
            return _Line(text, "comment")
        if stripped.split(None, 1)[0] in ACCESS_MODES:
            match = _EXTENT.match(stripped)
            if match is None:
                raise bad("an extent line reads ACCESS SECTORS TYPE \"FILE\" [OFFSET]")
            access, sectors, kind, filename, offset = match.groups()
            kind = kind.upper()
            if kind not in EXTENT_TYPES:
                raise bad(f"unknown extent type {kind}")
            sectors_n = int(sectors)
            if not 0 < sectors_n <= MAX_EXTENT_SECTORS:
                raise bad(f"an extent of {sectors_n} sectors")
            if kind == "ZERO":
                if filename is not None:
                    raise bad("a ZERO extent has no file")
            elif filename is None:
                raise bad(f"a {kind} extent needs a file name")
            elif not filename:
                raise bad("the file name is empty")
            offset_n = int(offset) if offset is not None else 0
            if offset is not None and kind != "FLAT":
                raise bad(f"only FLAT extents have an offset, not {kind}")
            if offset_n > MAX_EXTENT_SECTORS:
                raise bad(f"an offset of {offset_n} sectors")
            extent = ExtentLine(access, sectors_n, kind, filename, offset_n)
            return _Line(text, "extent", extent=extent)
        if "=" not in stripped:
            raise bad("expected key=value, an extent line or a # comment")
        key, value = (part.strip() for part in stripped.split("=", 1))
        if not _KEY.match(key):
            raise bad(f"{key!r} is not a key")
        quoted = value.startswith('"')
        if quoted:
            if len(value) < 2 or not value.endswith('"'):
                raise bad("the value's closing quote is missing")
            value = value[1:-1]
        kind = "ddb" if key.lower().startswith("ddb.") else "header"
        return _Line(text, kind, key, value, quoted)

    # -- building -------------------------------------------------------------------

    @classmethod
    def new(cls, create_type: str, cid: int, parent_cid: int, extents: list[ExtentLine],
            ddb: list[tuple[str, str]], parent_hint: str | None = None) -> Descriptor:
        """A descriptor laid out as VirtualBox and qemu write them."""
        lines = [_Line("# Disk DescriptorFile", "comment")]
        descriptor = cls(lines)
        for key, value in (("version", "1"), ("CID", f"{cid:08x}"),
                           ("parentCID", f"{parent_cid:08x}"), ("createType", create_type)):
            descriptor._append(key, value, "header")
        if parent_hint is not None:
            descriptor._append("parentFileNameHint", parent_hint, "header")
        lines.append(_Line("", "comment"))
        lines.append(_Line("# Extent description", "comment"))
        lines.extend(_Line(e.render(), "extent", extent=e) for e in extents)
        lines += [_Line("", "comment"), _Line("# The Disk Data Base", "comment"),
                  _Line("#DDB", "comment"), _Line("", "comment")]
        for key, value in ddb:
            descriptor._append(key, value, "ddb")
        return descriptor

    # -- access ---------------------------------------------------------------------

    def _find(self, key: str) -> _Line | None:
        wanted = key.lower()
        for line in self._lines:
            if line.key is not None and line.key.lower() == wanted:
                return line
        return None

    def get(self, key: str) -> str | None:
        """The (unquoted) value of a header or DDB key, None when absent."""
        line = self._find(key)
        return None if line is None else line.value

    def set(self, key: str, value: str | None) -> None:
        """Set a key (None removes it); new keys go to the end of their section."""
        line = self._find(key)
        if value is None:
            if line is not None:
                self._lines.remove(line)
            return
        if line is not None:
            line.value = value
            line.quoted = line.quoted or line.kind == "ddb" or \
                line.key.lower() not in _UNQUOTED_HEADER_KEYS
            line.text = self._render_pair(line.key, value, line.kind, line.quoted)
            return
        self._append(key, value, "ddb" if key.lower().startswith("ddb.") else "header")

    def _append(self, key: str, value: str, kind: str) -> None:
        quoted = kind == "ddb" or key.lower() not in _UNQUOTED_HEADER_KEYS
        new = _Line(self._render_pair(key, value, kind, quoted), kind, key, value, quoted)
        # After the last line of the same section; a new header key before the extents.
        last = max((i for i, line in enumerate(self._lines) if line.kind == kind), default=None)
        if last is None and kind == "header":
            first_extent = next((i for i, line in enumerate(self._lines)
                                 if line.kind in ("extent", "ddb")), len(self._lines))
            last = first_extent - 1
            while last >= 0 and self._lines[last].kind == "comment" and \
                    self._lines[last].text.strip() != "# Disk DescriptorFile":
                last -= 1
        self._lines.insert(len(self._lines) if last is None else last + 1, new)

    @staticmethod
    def _render_pair(key: str, value: str, kind: str, quoted: bool) -> str:
        shown = f'"{value}"' if quoted else value
        return f"{key} = {shown}" if kind == "ddb" else f"{key}={shown}"

    @property
    def extents(self) -> list[ExtentLine]:
        return [line.extent for line in self._lines if line.extent is not None]

    def set_extents(self, extents: list[ExtentLine]) -> None:
        """Replace the extent lines (in place of the old ones)."""
        positions = [i for i, line in enumerate(self._lines) if line.kind == "extent"]
        at = positions[0] if positions else len(self._lines)
        self._lines = [line for line in self._lines if line.kind != "extent"]
        self._lines[at:at] = [_Line(e.render(), "extent", extent=e) for e in extents]

    def keys(self) -> list[str]:
        return [line.key for line in self._lines if line.key is not None]

    def render(self) -> str:
        return "".join(line.text + "\n" for line in self._lines)

    # -- typed values ---------------------------------------------------------------

    def get_hex(self, key: str, path: str | None = None) -> int | None:
        """A 32-bit hexadecimal value (CID, parentCID); None when absent."""
        value = self.get(key)
        if value is None:
            return None
        try:
            number = int(value, 16)
        except ValueError:
            number = -1
        if not 0 <= number <= 0xFFFFFFFF:
            raise Corrupted(f"the descriptor's {key}={value!r} is not a 32-bit hexadecimal "
                            f"number", path, status=_STATUS)
        return number

    def get_int(self, key: str, path: str | None = None) -> int | None:
        """A decimal value (geometry); None when absent or empty."""
        value = self.get(key)
        if value is None or value.strip() == "":
            return None
        try:
            number = int(value.strip())
        except ValueError:
            raise Corrupted(f"the descriptor's {key}={value!r} is not a number", path,
                            status=_STATUS) from None
        if not 0 <= number <= 0xFFFFFFFF:
            raise Corrupted(f"the descriptor's {key}={value!r} is out of range", path,
                            status=_STATUS)
        return number


# -- where a file keeps its descriptor ------------------------------------------------


def new_cid(old: int | None = None) -> int:
    """A random content ID (never "no parent", never the old one)."""
    while True:
        cid = random.getrandbits(32)
        if cid not in (NO_PARENT_CID, old):
            return cid


@dataclass
class DescriptorSource:
    """Where an image's descriptor came from."""

    descriptor: Descriptor
    #: ``(byte offset, byte size)`` of an embedded descriptor area; None for a file.
    area: tuple[int, int] | None
    #: The header of a monolithic sparse file (its single extent is the file itself).
    header: SparseHeader | None = None
    #: A bare ESX COWD extent opened directly.
    cowd: bool = False
    #: The file holds no descriptor: this one was made up (its CID means nothing).
    synthetic: bool = False


def read_descriptor(storage: Storage, path: str) -> DescriptorSource:
    """The descriptor of the VMDK file in ``storage`` (text, embedded, or synthesised)."""
    head = storage.read_at(0, SECTOR)
    if head[:4] == COWD_MAGIC:
        descriptor = Descriptor.new("vmfsSparse", 0, NO_PARENT_CID, [], [])
        return DescriptorSource(descriptor, (0, 0), cowd=True, synthetic=True)
    if head[:4] == MAGIC:
        header = SparseHeader.unpack(head, path)
        area = (header.desc_offset * SECTOR, header.desc_size * SECTOR)
        if header.desc_offset and area[0] >= storage.size():
            raise Corrupted("the embedded descriptor lies beyond the end of the file", path,
                            status=_STATUS)
        text = ""
        if header.desc_offset and header.desc_size:
            raw = storage.read_at(area[0], min(area[1], MAX_DESCRIPTOR_BYTES + 1))
            raw = raw.split(b"\0", 1)[0]
            if len(raw) > MAX_DESCRIPTOR_BYTES:
                raise NotSupported("the embedded VMDK descriptor is too large", path,
                                   status=_STATUS)
            text = decode(raw)
        if header.capacity == 0:
            if not text.strip():
                raise Corrupted("the VMDK file has neither a capacity nor a descriptor", path,
                                status=_STATUS)
            return DescriptorSource(Descriptor.parse(text, path), area)
        synthetic = not text.strip()
        if synthetic:  # an extent of a split image, opened on its own
            descriptor = Descriptor.new("monolithicSparse", new_cid(), NO_PARENT_CID, [], [])
        else:
            descriptor = Descriptor.parse(text, path)
        if not (header.desc_offset and header.desc_size):
            area = (0, 0)  # no room for a descriptor
        return DescriptorSource(descriptor, area, header, synthetic=synthetic)
    size = storage.size()
    if size > MAX_DESCRIPTOR_BYTES:
        raise NotSupported(f"the VMDK descriptor file is {size} bytes long, more than the "
                           f"{MAX_DESCRIPTOR_BYTES} this program accepts", path, status=_STATUS)
    # qemu rewrites the CID as a 10 KiB block: the text may be followed by NULs.
    raw = storage.read_at(0, size).split(b"\0", 1)[0]
    if not looks_like_descriptor(raw[:4096]):
        raise InvalidHeader("not a VMDK image (no KDMV signature and no descriptor)", path,
                            status=_STATUS)
    return DescriptorSource(Descriptor.parse(decode(raw), path), None)


def read_cid(io: StorageProvider, path: str) -> int:
    """The CID of the VMDK image at ``path`` (for a child's ``parentCID``)."""
    with io.open(path) as storage:
        source = read_descriptor(storage, path)
    if source.synthetic:
        return NO_PARENT_CID  # a bare extent has no CID a child could match
    cid = source.descriptor.get_hex("CID", path)
    if cid is None:
        raise Corrupted("the parent VMDK's descriptor has no CID", path, status=_NOT_FOUND)
    return cid
