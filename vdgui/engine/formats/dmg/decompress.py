"""Bounded chunk decoders: a chunk never allocates more than its declared size.

Every compressed DMG chunk decodes on its own to exactly ``sectors * 512`` bytes.
Each decoder is asked for at most that much output (``max_length``) and then for
one byte more: if there is one, the chunk is corrupt (or a decompression bomb),
and nothing beyond the declared size was ever produced.

LZFSE needs the optional ``lzfse`` package.  Its ``decompress()`` grows its output
buffer without limit, so the reference decoder it contains is called through
ctypes with a fixed-size destination instead.
"""

from __future__ import annotations

import bz2
import ctypes
import functools
import lzma
import zlib
from typing import Callable

from . import adc
from .chunks import ADC, BZIP2, LZFSE, LZMA, ZLIB, type_name

#: An LZMA stream whose dictionary needs more memory than this is refused.
LZMA_MEMORY_LIMIT = 128 << 20


class ChunkError(Exception):
    """A chunk's payload does not decode to exactly its declared size."""


class ChunkUnsupported(Exception):
    """This program cannot decode the chunk's compression (here)."""


def decode(kind: int, payload: bytes, expected: int) -> bytes:
    """The ``expected`` bytes a compressed chunk of type ``kind`` holds."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ChunkUnsupported(f"chunks of type {type_name(kind)} are not supported")
    out = decoder(payload, expected)
    if len(out) != expected:
        raise ChunkError(f"it decodes to {len(out)} bytes instead of the {expected} its "
                         f"sector count says")
    return out


def _too_long(expected: int) -> ChunkError:
    return ChunkError(f"it decodes to more than the {expected} bytes its sector count says")


def _zlib(payload: bytes, expected: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, expected)
        if len(out) == expected and not inflater.eof \
                and inflater.decompress(inflater.unconsumed_tail, 1):
            raise _too_long(expected)
    except zlib.error as exc:
        raise ChunkError(f"bad zlib data ({exc})") from None
    return out


def _streaming(factory: Callable[[], object], name: str,
               errors: tuple[type[BaseException], ...]) -> Callable[[bytes, int], bytes]:
    """A bounded decoder over a bz2/lzma-style decompressor object."""
    def run(payload: bytes, expected: int) -> bytes:
        decoder = factory()
        try:
            out = decoder.decompress(payload, max_length=expected)
            if len(out) == expected and not decoder.eof and decoder.decompress(b"", 1):
                raise _too_long(expected)
        except errors as exc:
            raise ChunkError(f"bad {name} data ({exc})") from None
        return out
    return run


_bzip2 = _streaming(bz2.BZ2Decompressor, "bzip2", (OSError, ValueError, EOFError))
_lzma = _streaming(functools.partial(lzma.LZMADecompressor, memlimit=LZMA_MEMORY_LIMIT),
                   "LZMA", (lzma.LZMAError, EOFError))


def _adc(payload: bytes, expected: int) -> bytes:
    try:
        return adc.decompress(payload, expected)
    except adc.AdcOverflow:
        raise _too_long(expected) from None
    except adc.AdcError as exc:
        raise ChunkError(f"bad ADC data ({exc})") from None


@functools.lru_cache(maxsize=1)
def lzfse_decoder() -> Callable[..., int] | str:
    """``lzfse_decode_buffer`` from the ``lzfse`` package, or why it is unavailable."""
    try:
        import lzfse  # type: ignore[import-not-found]
    except ImportError:
        return "LZFSE chunks need the optional Python package 'lzfse' (pip install lzfse)"
    try:
        function = ctypes.CDLL(lzfse.__file__).lzfse_decode_buffer
    except (OSError, AttributeError, TypeError):
        return ("the installed 'lzfse' package does not expose the bounded decoder "
                "lzfse_decode_buffer that this program needs for LZFSE chunks")
    function.restype = ctypes.c_size_t
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
                         ctypes.c_void_p)
    return function


def _lzfse(payload: bytes, expected: int) -> bytes:
    function = lzfse_decoder()
    if isinstance(function, str):
        raise ChunkUnsupported(function)
    # One spare byte: a full buffer means the stream holds more than declared.
    out = ctypes.create_string_buffer(expected + 1)
    produced = function(out, expected + 1, payload, len(payload), None)
    if produced > expected:
        raise _too_long(expected)
    if produced == 0 and expected:
        raise ChunkError("bad LZFSE data (the decoder rejected it)")
    return out.raw[:produced]


_DECODERS: dict[int, Callable[[bytes, int], bytes]] = {
    ADC: _adc, ZLIB: _zlib, BZIP2: _bzip2, LZFSE: _lzfse, LZMA: _lzma,
}
