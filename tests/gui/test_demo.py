"""The demo chain of ``vdgui --demo``."""

from __future__ import annotations

from vdgui import demo
from vdgui.engine import OpenFlags, discover_chain, open_chain


def test_demo_chain_is_made_once_with_data_in_every_layer(tmp_path):
    top = demo.ensure_demo_chain(tmp_path)
    assert [link.path for link in discover_chain(top)][-1] == str(top)
    assert len(discover_chain(top)) == 3
    with open_chain(top, OpenFlags.READONLY) as disk:
        assert disk.size == demo.SIZE
        holders = {extent.path for extent in disk.map() if extent.depth is not None}
        assert len(holders) == 3  # each layer serves some of the disk
        assert disk.read(16 * demo.MIB, 64).startswith(b"vdgui demo: changed in the second")
        assert disk.read(8 * demo.MIB, 64).startswith(b"vdgui demo: changed in the first")
    stamps = [(tmp_path / name).stat().st_mtime_ns for name in demo.FILES]
    assert demo.ensure_demo_chain(tmp_path) == top
    assert [(tmp_path / name).stat().st_mtime_ns for name in demo.FILES] == stamps


def test_a_broken_demo_chain_is_made_again(tmp_path):
    demo.ensure_demo_chain(tmp_path)
    (tmp_path / demo.SNAPSHOT_1).unlink()
    (tmp_path / "mine.txt").write_text("untouched")
    top = demo.ensure_demo_chain(tmp_path)
    assert len(discover_chain(top)) == 3
    assert (tmp_path / "mine.txt").read_text() == "untouched"


def test_demo_in_the_window(qtbot, window, hermetic_home):
    with qtbot.waitSignal(window.refreshed, timeout=10_000):
        window.open_demo()
    top = hermetic_home / "data" / "demo" / demo.SNAPSHOT_2
    assert window.current_node().path == str(top)
    assert window.library.entries == [str(top)]
