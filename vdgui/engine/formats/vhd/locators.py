"""VHD parent locators: how a differencing image says where its parent lives.

The dynamic header has eight locator entries (platform code, data space, data
length, data offset); each points at a path stored elsewhere in the file, in a
platform's own form:

=========  ===================================================================
``W2ru``   relative Windows path, UTF-16LE (Hyper-V writes ``.\\parent.vhd``)
``W2ku``   absolute Windows path, UTF-16LE
``Wi2r``   relative Windows path, "ANSI" (deprecated; read as UTF-8 or Latin-1)
``Wi2k``   absolute Windows path, "ANSI" (deprecated)
``MacX``   file URL, UTF-8 (``file://localhost/Users/me/parent.vhd``)
``Mac ``   a classic Mac OS alias record
=========  ===================================================================

"Data space" is a sector count in the specification but a byte count in what
Virtual PC, Hyper-V and VirtualBox write: when the data length exceeds the value
it must be sectors, otherwise it is taken as bytes (:func:`capacity`).

Alias records: we write a minimal version 2 record (volume "Macintosh HD", the
file name, the HFS path, the UTF-16 file name and the POSIX path extension tags)
and read the POSIX path tag (joined to the mount-point tag), else the HFS path,
else the bare file name -- enough to find a parent next to its child.
"""

from __future__ import annotations

import ntpath
import os
import struct
import urllib.parse

from ..base import relative_parent_path

NONE = 0
WI2R = 0x57693272
WI2K = 0x5769326B
W2RU = 0x57327275
W2KU = 0x57326B75
MAC = 0x4D616320
MACX = 0x4D616358

KNOWN = (W2RU, W2KU, WI2R, WI2K, MACX, MAC)
RELATIVE = (W2RU, WI2R)

#: Locator data larger than this is not a path; such a locator is ignored.
MAX_DATA = 64 * 1024


def code_name(code: int) -> str:
    """``W2ru``, ``Mac `` ... or the number in hex for unknown codes."""
    raw = code.to_bytes(4, "big")
    if all(32 <= b < 127 for b in raw):
        return raw.decode("ascii")
    return f"{code:#010x}"


def capacity(data_space: int, data_length: int) -> int:
    """Bytes reserved for a locator's data (data space in bytes or in sectors)."""
    if data_length > data_space:
        return data_space * 512
    return data_space


def windows_relative(child_path: str, parent_path: str) -> str:
    """The parent as a Windows relative path from the child's folder (``.\\p.vhd``)."""
    rel = relative_parent_path(child_path, parent_path)
    if os.path.isabs(rel):  # outside the child's folder: still relative here
        try:
            rel = os.path.relpath(os.path.abspath(parent_path),
                                  os.path.dirname(os.path.abspath(child_path)))
        except ValueError:  # another drive on Windows: no relative path exists
            return rel
    rel = rel.replace(os.sep, "\\")
    return rel if rel.startswith("..") else ".\\" + rel


def encode(code: int, parent_path: str, child_path: str) -> bytes:
    """The locator data of kind ``code`` for ``parent_path`` seen from ``child_path``."""
    absolute = os.path.abspath(parent_path)
    if code == W2RU:
        return windows_relative(child_path, parent_path).encode("utf-16-le")
    if code == W2KU:
        return absolute.encode("utf-16-le")
    if code == WI2R:
        return windows_relative(child_path, parent_path).encode("utf-8")
    if code == WI2K:
        return absolute.encode("utf-8")
    if code == MACX:
        posix = absolute.replace(os.sep, "/")
        return ("file://localhost" + urllib.parse.quote(posix)).encode("utf-8")
    if code == MAC:
        return alias_record(absolute.replace(os.sep, "/"))
    raise ValueError(f"no encoding for parent locator {code_name(code)}")


def decode(code: int, data: bytes) -> str | None:
    """The path a locator's data holds, or None when it holds none."""
    if code in (W2RU, W2KU):
        text = data[:len(data) // 2 * 2].decode("utf-16-le", errors="replace")
    elif code in (WI2R, WI2K):
        text = _ansi(data)
    elif code == MACX:
        text = _ansi(data).split("\0", 1)[0]
        if text.startswith("file://"):
            text = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
    elif code == MAC:
        text = alias_path(data) or ""
    else:
        return None
    text = text.split("\0", 1)[0]
    return text or None


def is_climbing(path: str) -> bool:
    """True for a relative path that leaves the child's folder (``..\\x.vhd``)."""
    first = ntpath.normpath(path.replace("/", "\\")).split("\\", 1)[0]
    return first == ".."


def _ansi(data: bytes) -> str:
    data = data.split(b"\0", 1)[0]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# -- Mac OS alias records --------------------------------------------------------------

_ALIAS_FIXED = struct.Struct(">4sHHH28sI2sHI64sII4s4shhIH10s")
_ALIAS_VOLUME = "Macintosh HD"
_TAG_HFS_PATH, _TAG_UNICODE_NAME, _TAG_POSIX_PATH, _TAG_POSIX_MOUNT = 2, 14, 18, 19
_TAG_END = -1


def _pascal(text: str, size: int) -> bytes:
    raw = text.encode("mac_roman", errors="replace")[:size - 1]
    return bytes([len(raw)]) + raw.ljust(size - 1, b"\0")


def alias_record(posix_path: str) -> bytes:
    """A version 2 alias record for the file at ``posix_path``."""
    name = posix_path.rsplit("/", 1)[-1]
    parts = [p for p in posix_path.split("/") if p]
    tags = [
        (_TAG_HFS_PATH, ":".join([_ALIAS_VOLUME, *parts]).encode("mac_roman", "replace")),
        (_TAG_UNICODE_NAME, struct.pack(">H", len(name.encode("utf-16-be")) // 2)
         + name.encode("utf-16-be")),
        (_TAG_POSIX_PATH, posix_path.encode("utf-8")),
        (_TAG_POSIX_MOUNT, b"/"),
    ]
    body = b"".join(struct.pack(">hH", tag, len(data)) + data + b"\0" * (len(data) & 1)
                    for tag, data in tags) + struct.pack(">hH", _TAG_END, 0)
    size = _ALIAS_FIXED.size + len(body)
    fixed = _ALIAS_FIXED.pack(
        b"\0" * 4, size, 2, 0, _pascal(_ALIAS_VOLUME, 28), 0, b"H+", 0, 0,
        _pascal(name, 64), 0, 0, b"\0" * 4, b"\0" * 4, -1, -1, 0, 0, b"\0" * 10)
    return fixed + body


def alias_path(blob: bytes) -> str | None:
    """The path an alias record points to, as well as it can be told."""
    if len(blob) < _ALIAS_FIXED.size:
        return None
    tags: dict[int, bytes] = {}
    pos = _ALIAS_FIXED.size
    while pos + 4 <= len(blob):
        tag, length = struct.unpack_from(">hH", blob, pos)
        if tag == _TAG_END:
            break
        tags.setdefault(tag, blob[pos + 4:pos + 4 + length])
        pos += 4 + length + (length & 1)
    if _TAG_POSIX_PATH in tags:
        path = tags[_TAG_POSIX_PATH].decode("utf-8", errors="replace")
        mount = tags.get(_TAG_POSIX_MOUNT, b"/").decode("utf-8", errors="replace")
        if mount not in ("", "/"):
            path = mount.rstrip("/") + "/" + path.lstrip("/")
        return path
    if _TAG_HFS_PATH in tags:
        parts = tags[_TAG_HFS_PATH].decode("mac_roman").split(":")
        return "/" + "/".join(p for p in parts[1:] if p)
    length = min(blob[50], 63)
    return blob[51:51 + length].decode("mac_roman") or None
