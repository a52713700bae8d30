"""The ADC decoder: hand-made streams of every operation, limits and damage."""

from __future__ import annotations

import random

import pytest

from tests.formats.dmg.builder import adc_encode, noise, text
from vdgui.engine.formats.dmg import adc


def test_literal_short_copy_and_overlapping_long_copy():
    stream = bytes([0x82]) + b"abc"          # literal run of 3
    stream += bytes([0x00, 0x02])            # copy 3 from distance 3: "abc"
    stream += bytes([0x42, 0x00, 0x00])      # copy 6 from distance 1: "cccccc"
    stream += bytes([0x04 | 0x01, 0x0B])     # copy 4 from distance 0x10C: out of range
    with pytest.raises(adc.AdcError, match="before the start"):
        adc.decompress(stream, 100)
    assert adc.decompress(stream[:-2], 100) == b"abcabccccccc"


def test_long_distances_and_pattern_repeats():
    head = bytes(range(256)) * 2              # 512 bytes, in 4 literal runs of 128
    stream = b"".join(bytes([0xFF]) + head[i:i + 128] for i in range(0, 512, 128))
    stream += bytes([0x40 | 63, 0x01, 0xFF])  # copy 67 from distance 512
    stream += bytes([0x3C, 0x01])             # copy 18 from distance 2: a 2-byte pattern
    out = head + head[:67]
    out += (out[-2:] * 9)
    assert adc.decompress(stream, len(out)) == out


def test_output_beyond_the_limit_is_refused():
    stream = bytes([0x80]) + b"z" + bytes([0x40 | 63, 0, 0]) * 100  # 1 + 6700 bytes
    assert len(adc.decompress(stream, 6701)) == 6701
    with pytest.raises(adc.AdcOverflow):
        adc.decompress(stream, 6700)


@pytest.mark.parametrize("stream", [bytes([0x85]) + b"abc", bytes([0x80, 0x61, 0x40, 0x00]),
                                    bytes([0x80, 0x61, 0x00])])
def test_cut_short_streams(stream):
    with pytest.raises(adc.AdcError, match="cut short"):
        adc.decompress(stream, 100)


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_through_the_test_encoder(seed):
    rng = random.Random(seed)
    data = (text(3, seed) + bytes(700) + noise(1, seed) + b"ab" * 300
            + text(2, seed)[:rng.randrange(1, 1024)])
    stream = adc_encode(data)
    assert len(stream) < len(data)
    ops = {("lit" if b & 0x80 else "long" if b & 0x40 else "short") for b in _op_bytes(stream)}
    assert ops == {"lit", "long", "short"}
    assert adc.decompress(stream, len(data)) == data


def _op_bytes(stream: bytes):
    pos = 0
    while pos < len(stream):
        op = stream[pos]
        yield op
        pos += (op & 0x7F) + 2 if op & 0x80 else 3 if op & 0x40 else 2
