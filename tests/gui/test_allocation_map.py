"""The allocation map: the right layer for each block of a known chain, the bytes each
layer owns and hides, the view reading it through qasync, and the chain diagram."""

from __future__ import annotations

from PySide6.QtCore import QPoint, Qt

from vdgui.engine import Disk, OpenFlags, open_chain
from vdgui.gui.allocation import UNALLOCATED, UNKNOWN, MapBuilder
from vdgui.gui.widgets.allocation_map import LayerColumn, LayersModel
from vdgui.gui.widgets.chain_diagram import ChainDiagram
from vdgui.library import scan

from .helpers import MIB, make_chain, open_and_wait, select


def test_map_of_a_known_chain(tmp_path):
    base, diff1, diff2 = make_chain(tmp_path)
    with open_chain(diff2, OpenFlags.READONLY) as disk:
        allocation = MapBuilder(disk).run()
    # 1 MiB VDI blocks: base holds block 0, diff1 block 1, diff2 block 2.
    assert allocation.dominant(8) == [(0, False), (1, False), (2, False)] + \
        [(UNALLOCATED, True)] * 5
    assert [layer.visible for layer in allocation.layers] == [MIB, MIB, MIB]
    assert allocation.unallocated == 5 * MIB
    assert allocation.breakdown(0, 3 * MIB) == [(0, False, MIB), (1, False, MIB),
                                                (2, False, MIB)]


def test_shadowed_and_zero_bytes(tmp_path):
    base, top = tmp_path / "base.vdi", tmp_path / "top.vdi"
    with Disk() as disk:
        disk.create_base(base, 4 * MIB, "VDI")
        disk.write(0, b"old" * (MIB // 3 * 2))
        disk.create_diff(top)
        disk.write(0, b"new" * (MIB // 3))  # replaces the base's first block
        disk.write(MIB, bytes(MIB))  # zeros that hide the base's second block
    with open_chain(top, OpenFlags.READONLY) as disk:
        builder = MapBuilder(disk)
        partial = builder.advance(MIB)  # progressive: the rest is not read yet
        assert partial.dominant(4) == [(1, False), (UNKNOWN, False), (UNKNOWN, False),
                                       (UNKNOWN, False)]
        allocation = builder.run()
    base_layer, top_layer = allocation.layers
    assert base_layer.stored == 2 * MIB and base_layer.visible == 0
    assert base_layer.shadowed == 2 * MIB  # all of it replaced or hidden by zeros
    assert top_layer.visible == MIB and top_layer.zero == MIB
    assert allocation.dominant(4)[1] == (1, True)


def test_the_window_shows_the_map_of_the_selected_chain(qtbot, window, chain, qtmodeltester):
    base, diff1, diff2 = chain
    open_and_wait(qtbot, window, diff2)
    view = window.map_view
    if view.grid.map is None or not view.grid.map.complete:
        with qtbot.waitSignal(view.map_ready, timeout=10_000):
            pass
    assert view.path == str(diff2)
    assert view.grid.map.dominant(8)[:4] == [(0, False), (1, False), (2, False),
                                             (UNALLOCATED, True)]
    model = view.layers
    qtmodeltester.check(model)
    assert [model.data(model.index(r, LayerColumn.LAYER)) for r in range(4)] == \
        ["base.vdi", "diff1.vdi", "diff2.vdi", "Not allocated"]
    assert model.data(model.index(2, LayerColumn.SERVES)) == "1 MiB"
    assert "1,048,576 bytes" in model.data(model.index(2, LayerColumn.SERVES),
                                           Qt.ItemDataRole.ToolTipRole)
    assert model.data(model.index(3, LayerColumn.SERVES)) == "5 MiB"
    tip = view.grid.cell_tooltip(0)
    assert "data in base.vdi" in tip
    assert "data in base.vdi: 1 MiB" in view.grid.accessibleDescription()

    with qtbot.waitSignal(view.map_ready, timeout=10_000):
        select(qtbot, window, diff1)  # another image: its own chain
    assert view.path == str(diff1)
    assert len(view.grid.map.paths) == 2


def test_a_broken_chain_has_no_map_but_says_why(qtbot, window, chain):
    base, diff1, diff2 = chain
    base.unlink()
    open_and_wait(qtbot, window, diff2)
    select(qtbot, window, diff1)
    assert window.map_view.grid.map is None
    assert "needs the whole chain" in window.map_view.status.text()


def test_layers_model_of_nothing_passes_modeltester(qtmodeltester):
    qtmodeltester.check(LayersModel())


def test_chain_diagram_draws_branches_and_answers_clicks_and_keys(qtbot, tmp_path):
    base, diff1, diff2 = make_chain(tmp_path)
    branch = tmp_path / "branch.vdi"
    with open_chain(diff1, OpenFlags.READONLY) as disk:
        disk.create_diff(branch)
    tree = scan([str(diff2), str(branch)])
    nodes = [tree.find(p) for p in (base, diff1, diff2, branch)]
    diagram = ChainDiagram()
    qtbot.addWidget(diagram)
    diagram.set_nodes(nodes, nodes[2])
    diagram.resize(diagram.sizeHint())
    diagram.show()
    boxes = {n.name: diagram.box(n) for n in nodes}
    assert boxes["base.vdi"].top() < boxes["diff1.vdi"].top() < boxes["diff2.vdi"].top()
    assert boxes["diff2.vdi"].top() == boxes["branch.vdi"].top()  # siblings side by side
    assert boxes["diff2.vdi"].left() != boxes["branch.vdi"].left()
    with qtbot.waitSignal(diagram.node_clicked) as blocker:
        qtbot.mouseClick(diagram, Qt.MouseButton.LeftButton, pos=boxes["branch.vdi"].center())
    assert blocker.args[0].name == "branch.vdi"
    diagram.setFocus()
    qtbot.keyClick(diagram, Qt.Key.Key_Up)
    with qtbot.waitSignal(diagram.node_clicked) as blocker:
        qtbot.keyClick(diagram, Qt.Key.Key_Space)
    assert blocker.args[0].name == "diff1.vdi"
    assert "diff2.vdi (on diff1.vdi)" in diagram.accessibleDescription()
    assert "/diff2.vdi" in diagram.node_tooltip(nodes[2])
    assert diagram.node_at(QPoint(0, 0)) is None
    # Hidden before Python drops it: a shown top-level widget that the garbage
    # collector deletes while Qt still has an expose event for it crashes Qt.
    diagram.close()


def test_views_paint_with_the_palette_so_dark_themes_work(qtbot, tmp_path):
    from PySide6.QtGui import QColor, QPalette

    from vdgui.gui.widgets.allocation_map import AllocationGrid
    base, diff1, diff2 = make_chain(tmp_path)
    with open_chain(diff2, OpenFlags.READONLY) as disk:
        allocation = MapBuilder(disk).run()
    dark = QPalette()
    for role, color in ((QPalette.ColorRole.Window, "#202020"),
                        (QPalette.ColorRole.Base, "#101010"),
                        (QPalette.ColorRole.Text, "#eeeeee"),
                        (QPalette.ColorRole.Mid, "#555555")):
        dark.setColor(role, QColor(color))
    grid = AllocationGrid()
    qtbot.addWidget(grid)
    grid.setPalette(dark)
    grid.resize(8 * 11 + 1, 11 + 1)  # one row of eight cells
    grid.set_map(allocation)
    image = grid.grab().toImage()
    assert image.pixelColor(grid.cell_rect(7).center()) == QColor("#101010")  # empty cell
    assert image.pixelColor(grid.cell_rect(0).center()) == QColor("#0072B2")  # base layer
    diagram = ChainDiagram()
    qtbot.addWidget(diagram)
    diagram.setPalette(dark)
    tree = scan([str(diff2)])
    diagram.set_nodes([tree.find(p) for p in (base, diff1, diff2)])
    diagram.resize(diagram.sizeHint())
    picture = diagram.grab().toImage()
    box = diagram.box(tree.find(base))
    assert picture.pixelColor(box.right() - 8, box.bottom() - 6) == QColor("#101010")


def test_without_an_event_loop_the_map_is_read_in_one_go(qtbot, tmp_path,
                                                         event_loop_qasync):
    import asyncio

    from vdgui.gui.widgets.allocation_map import AllocationMapView
    base, diff1, diff2 = make_chain(tmp_path)
    view = AllocationMapView()
    qtbot.addWidget(view)
    asyncio.events._set_running_loop(None)  # a script driving the window by hand
    try:
        with qtbot.waitSignal(view.map_ready, timeout=10_000):
            view.show_chain(str(diff2))
    finally:
        asyncio.events._set_running_loop(event_loop_qasync)
    assert view.grid.map.complete and len(view.grid.map.layers) == 3
    view.shutdown()
