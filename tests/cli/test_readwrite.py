"""``vdimg read`` and ``vdimg write``."""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import pytest

from vdgui.cli.commands import readwrite
from vdgui.engine import OpenFlags, open_chain

from .helpers import Runner, content, make_image, snapshot


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Chunks of 64 KiB, so that multi-chunk paths run on small images."""
    monkeypatch.setattr(readwrite, "CHUNK", 64 << 10)
    return 64 << 10


def test_round_trip_through_diff_chain(vdimg: Runner, tmp_path: Path,
                                       small_chunks: int) -> None:
    base, diff = tmp_path / "base.vdi", tmp_path / "diff.vdi"
    assert vdimg("create", base, "4M").rc == 0
    base_data = os.urandom(300_000)
    assert vdimg("write", base, "0", stdin=base_data).rc == 0
    assert vdimg("create", "--parent", base, diff).rc == 0
    top_data = os.urandom(200_001)
    source = tmp_path / "data.bin"
    source.write_bytes(top_data)
    result = vdimg("write", diff, "100000", source)  # unaligned, several chunks
    assert result.rc == 0, result.err
    assert "200001 bytes" in result.text
    expected = bytearray(4 << 20)
    expected[:300_000] = base_data
    expected[100_000:300_001] = top_data
    result = vdimg("read", diff, "0", "4M")
    assert result.rc == 0 and result.out == bytes(expected)
    assert vdimg("read", diff, "99999", "7").out == bytes(expected[99_999:100_006])
    assert vdimg("read", base, "0", "300000").out == base_data  # the base is untouched
    assert content(diff) == bytes(expected)


def test_read_suffixes_and_zero_length(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", data={1 << 20: b"\x01" * 1024})
    assert vdimg("read", image, "1M", "1K").out == b"\x01" * 1024
    result = vdimg("read", image, "0", "0")
    assert result.rc == 0 and result.out == b""


def test_read_past_end(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=1 << 20)
    vdimg("read", image, "1M", "1").assert_error(2, str(image), "end")
    vdimg("read", image, "0", "x").assert_error(2, "LENGTH")


def test_write_past_end_refused_before_writing(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=1 << 20)
    source = tmp_path / "data.bin"
    source.write_bytes(b"\x07" * 4096)
    before = snapshot(image)
    vdimg("write", image, str((1 << 20) - 100), source).assert_error(2, str(image), "end")
    assert snapshot(image) == before


def test_stdin_past_end_reports_what_was_written(vdimg: Runner, tmp_path: Path,
                                                 small_chunks: int) -> None:
    image = make_image(tmp_path / "a.vdi", size=1 << 20)
    result = vdimg("write", image, "0", stdin=b"\x05" * ((1 << 20) + 10))
    result.assert_error(3, str(image), "end", "were written")


def test_write_missing_file(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi")
    before = snapshot(image)
    vdimg("write", image, "0", tmp_path / "nothing.bin").assert_error(3, "nothing.bin")
    assert snapshot(image) == before


def test_write_empty_input(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi")
    result = vdimg("write", image, "0", stdin=b"")
    assert result.rc == 0 and "wrote 0 bytes" in result.text


def test_write_to_locked_image_fails_clearly(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi")
    with open_chain(image, OpenFlags.NORMAL) as holder:
        assert not holder.is_read_only
        before = snapshot(image)
        vdimg("write", image, "0", stdin=b"data").assert_error(3, str(image), "in use")
        vdimg("set", "--comment", "x", image).assert_error(3, str(image), "in use")
        assert snapshot(image) == before
        # Reading while another writer holds it is fine.
        assert vdimg("read", image, "0", "4").rc == 0


def test_write_to_read_only_file(vdimg: Runner, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write read-only files")
    image = make_image(tmp_path / "a.vdi")
    image.chmod(0o444)
    vdimg("write", image, "0", stdin=b"data").assert_error(3, str(image), "permission")


def test_write_large_input_in_bounded_chunks(vdimg: Runner, tmp_path: Path,
                                             small_chunks: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Data is handed to the engine in whole chunks, however the input arrives."""
    image = make_image(tmp_path / "a.vdi", size=2 << 20)
    data = os.urandom(300_000)

    class Trickle(io.RawIOBase):
        """A pipe delivering 1000 bytes per read."""

        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
            n = min(1000, len(buf), len(data) - self.pos)
            buf[:n] = data[self.pos:self.pos + n]
            self.pos += n
            return n

    from vdgui.engine import Disk
    sizes: list[int] = []
    original = Disk.write

    def record(self: Disk, offset: int, chunk: bytes | memoryview) -> None:
        sizes.append(len(chunk))
        original(self, offset, chunk)

    monkeypatch.setattr(Disk, "write", record)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Trickle())))
    result = vdimg("write", image, "0")
    assert result.rc == 0, result.err
    assert [s for s in sizes if s] == [small_chunks] * 4 + [300_000 - 4 * small_chunks]
    assert content(image)[:300_000] == data


def test_ctrl_c_during_write(vdimg: Runner, tmp_path: Path, small_chunks: int,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path / "a.vdi", size=2 << 20)
    reads = 0

    class Interrupting(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
            nonlocal reads
            reads += 1
            if reads == 2:
                os.kill(os.getpid(), signal.SIGINT)
            buf[:len(buf)] = b"\x09" * len(buf)
            return len(buf)

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Interrupting())))
    vdimg("write", image, "0").assert_error(3, str(image), "cancelled")
    assert reads < 8  # stopped soon, not at the end of the disk
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert vdimg("read", image, "0", "1").rc == 0  # the image is still usable


def test_image_option_reaches_the_format(vdimg: Runner, tmp_path: Path) -> None:
    """A VMDK whose extent lies outside its folder opens only when allowed."""
    folder = tmp_path / "vm"
    folder.mkdir()
    assert vdimg("create", "-v", "fixed", folder / "d.vmdk", "1M").rc == 0
    (folder / "d-flat.vmdk").rename(tmp_path / "d-flat.vmdk")
    descriptor = (folder / "d.vmdk").read_text()
    (folder / "d.vmdk").write_text(descriptor.replace('"d-flat.vmdk"', '"../d-flat.vmdk"'))
    vdimg("read", folder / "d.vmdk", "0", "16").assert_error(3, "d.vmdk")
    result = vdimg("read", "--image-option", "AllowExternalExtents=1", folder / "d.vmdk",
                   "0", "16")
    assert result.rc == 0


def test_read_through_a_cache_image(vdimg: Runner, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.vdi", size=4 << 20, data={4096: b"cached!"})
    cache = tmp_path / "a.vci"
    first = vdimg("read", "--cache", cache, image, "4096", "7")
    assert first.rc == 0 and first.out == b"cached!" and cache.exists()
    again = vdimg("read", "--cache", cache, image, "4096", "7")
    assert again.rc == 0 and again.out == b"cached!"
    # After a write the top's modification UUID changes: the old cache no longer
    # matches and is refused rather than served stale.
    (tmp_path / "new.bin").write_bytes(b"changed")
    assert vdimg("write", image, "4096", tmp_path / "new.bin").rc == 0
    vdimg("read", "--cache", cache, image, "4096", "7").assert_error(3, "a.vci")
