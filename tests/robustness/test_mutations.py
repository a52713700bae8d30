"""Every format's read paths against mutated images: a VDError or a correct read,
never another exception, a write, a hang or unbounded memory.

``make test`` runs a small budget per seed; ``make stress`` a large one (the
examples count comes from ``VDGUI_FUZZ_EXAMPLES``) plus coverage-guided fuzzing
(test_fuzz.py).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import exercise
from .seeds import all_seeds

EXAMPLES = int(os.environ.get("VDGUI_FUZZ_EXAMPLES", "12"))

#: Values that break parsers: zero, one, sign bits, all ones, just-too-big sizes.
INTERESTING = [0, 1, 2, 0x1FF, 0x200, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFE, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63,
               (1 << 64) - 1]


@st.composite
def mutation(draw, length: int):
    near_header = draw(st.booleans())
    limit = min(length, 4096) if near_header else length
    offset = draw(st.integers(0, max(limit - 1, 0)))
    kind = draw(st.sampled_from(["flip", "word", "word", "truncate", "zero-run"]))
    if kind == "flip":
        return ("flip", offset, draw(st.integers(1, 255)))
    if kind == "word":
        size = draw(st.sampled_from([2, 4, 8]))
        order = draw(st.sampled_from("<>"))
        value = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * size)) - 1)
        return ("word", offset, struct.pack(order + {2: "H", 4: "I", 8: "Q"}[size], value))
    if kind == "truncate":
        return ("truncate", offset, None)
    return ("zero-run", offset, draw(st.integers(1, 4096)))


def apply(data: bytes, mutations: list) -> bytes:
    out = bytearray(data)
    for kind, offset, arg in mutations:
        if kind == "flip" and offset < len(out):
            out[offset] ^= arg
        elif kind == "word":
            out[offset:offset + len(arg)] = arg
        elif kind == "truncate":
            del out[offset:]
        elif kind == "zero-run":
            out[offset:offset + arg] = bytes(len(out[offset:offset + arg]))
    return bytes(out)


SEEDS = sorted(all_seeds())


@pytest.mark.parametrize("name", SEEDS)
def test_mutated_images_fail_cleanly(name):
    files, top = all_seeds()[name]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(target=st.sampled_from(sorted(files)), data=st.data())
    def run(target, data):
        mutations = data.draw(st.lists(mutation(len(files[target])), min_size=1, max_size=4))
        mutated = dict(files)
        mutated[target] = apply(files[target], mutations)
        exercise(mutated, top)

    run()


@pytest.mark.parametrize("name", SEEDS)
def test_every_truncation_of_the_header_area(name):
    """Cut the file at every 64-byte step of its first 4 KiB (and at 512-byte steps
    of the next 60 KiB): each prefix is an image to survive."""
    files, top = all_seeds()[name]
    data = files[top]
    cuts = list(range(0, min(len(data), 4096), 64)) + list(range(4096, min(len(data), 65536), 512))
    for cut in cuts:
        exercise({**files, top: data[:cut]}, top)
