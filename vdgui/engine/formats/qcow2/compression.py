"""Compressed QCOW2 clusters: raw deflate (the default) or zstd.

A compressed cluster must inflate to exactly one cluster; a stream that would give
more or fewer bytes is damage.  Output is always bounded by the cluster size, so a
hostile stream cannot make us allocate more.  zstd needs the optional
``zstandard`` module.
"""

from __future__ import annotations

import io
import zlib

from ...errors import Corrupted, NotSupported
from .header import COMPRESSION_DEFLATE, COMPRESSION_ZSTD

try:  # optional extra
    import zstandard
except ImportError:  # pragma: no cover - depends on the installation
    zstandard = None

#: Window of the deflate streams we write: 4 KiB, as qemu uses (its reader may
#: rely on it), so that every qcow2 reader can inflate them.
DEFLATE_WBITS = -12
ZSTD_MAX_WINDOW = 8 << 20


def _need_zstd(path: str) -> None:
    if zstandard is None:
        raise NotSupported("the image's compressed clusters use zstd, which needs the "
                           "'zstandard' Python module (pip install zstandard)", path)


def decompress(data: bytes, cluster_size: int, kind: int, path: str) -> bytes:
    """One cluster from a compressed stream (``data`` may run past the stream's end)."""
    if kind == COMPRESSION_ZSTD:
        _need_zstd(path)
        try:
            # Only the first frame: what follows may be the next cluster's stream.
            frame = data[:_zstd_frame_length(data, path)]
            # The window limit bounds what a hostile frame header can make us allocate.
            reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
                io.BytesIO(frame))
            out = bytearray()
            while len(out) < cluster_size:
                piece = reader.read(cluster_size - len(out))
                if not piece:
                    break
                out += piece
            overflow = len(out) == cluster_size and bool(reader.read(1))
        except zstandard.ZstdError as exc:
            raise Corrupted(f"a zstd-compressed cluster is damaged ({exc})", path) from None
    else:
        inflater = zlib.decompressobj(-15)
        try:
            out = inflater.decompress(data, cluster_size)
            overflow = len(out) == cluster_size and not inflater.eof and bool(
                inflater.decompress(inflater.unconsumed_tail, 1))
        except zlib.error as exc:
            raise Corrupted(f"a compressed cluster is damaged ({exc})", path) from None
    if overflow:
        raise Corrupted(f"a compressed cluster inflates to more than the cluster size "
                        f"({cluster_size} bytes)", path)
    if len(out) != cluster_size:
        raise Corrupted(f"a compressed cluster inflates to {len(out)} bytes instead of "
                        f"{cluster_size}", path)
    return bytes(out)


def _zstd_frame_length(data: bytes, path: str) -> int:
    """Length of the zstd frame at the start of ``data``, from its block headers."""
    pos = zstandard.frame_header_size(data)
    while True:
        if pos + 3 > len(data):
            raise Corrupted("a zstd-compressed cluster is cut short", path)
        block = int.from_bytes(data[pos:pos + 3], "little")
        pos += 3
        kind, size = block >> 1 & 3, block >> 3
        if kind == 3:
            raise Corrupted("a zstd-compressed cluster has an invalid block type", path)
        pos += 1 if kind == 1 else size  # an RLE block stores its byte once
        if block & 1:  # last block
            break
    if zstandard.get_frame_parameters(data).has_checksum:
        pos += 4
    return pos


def compress(data: bytes, kind: int, path: str) -> bytes:
    """The compressed stream for one cluster of ``data``."""
    if kind == COMPRESSION_ZSTD:
        _need_zstd(path)
        return zstandard.ZstdCompressor().compress(data)
    if kind != COMPRESSION_DEFLATE:
        raise NotSupported(f"unknown compression type {kind}", path)
    deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, DEFLATE_WBITS)
    return deflater.compress(data) + deflater.flush()
