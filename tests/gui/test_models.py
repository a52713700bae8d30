"""The smaller models: findings, the library filter; Qt's model consistency checks."""

from __future__ import annotations

from PySide6.QtCore import Qt

from vdgui.engine.findings import ERROR, LEAK, Finding
from vdgui.gui.models.chain_model import ChainModel, LibraryFilterProxy, matches
from vdgui.gui.models.findings_model import FindingColumn, FindingsModel
from vdgui.library import scan

from .helpers import make_chain


def test_findings_model(qtmodeltester):
    model = FindingsModel()
    qtmodeltester.check(model)
    model.set_findings([Finding(ERROR, "the header is damaged", 0x40),
                        Finding(LEAK, "2 blocks are unused", None, "shorten the file",
                                leaked_bytes=2 << 20)])
    qtmodeltester.check(model)
    assert model.data(model.index(0, FindingColumn.SEVERITY)) == "Error"
    assert model.data(model.index(0, FindingColumn.WHAT)) == "The header is damaged"
    assert model.data(model.index(0, FindingColumn.LOCATION)) == "offset 0x40"
    assert model.data(model.index(0, FindingColumn.FIX)) == "cannot be repaired"
    assert model.data(model.index(1, FindingColumn.LOCATION)) == "whole image"
    assert "2 MiB" in model.data(model.index(1, FindingColumn.FIX),
                                 Qt.ItemDataRole.ToolTipRole)
    assert model.data(model.index(0, FindingColumn.SEVERITY),
                      Qt.ItemDataRole.DecorationRole) is not None


def test_library_filter(qtmodeltester, tmp_path):
    chain = make_chain(tmp_path)
    model = ChainModel()
    model.set_tree(scan([str(chain[2])]))
    proxy = LibraryFilterProxy()
    proxy.setSourceModel(model)
    qtmodeltester.check(proxy)
    proxy.set_text("DIFF2")
    qtmodeltester.check(proxy)
    root = proxy.index(0, 0)
    assert proxy.data(root) == "base.vdi"  # ancestors stay, so the tree stays a tree
    assert proxy.rowCount(proxy.index(0, 0, root)) == 1
    proxy.set_text("no such image")
    assert proxy.rowCount() == 0
    node = model.tree.find(chain[0])
    assert matches(node, f"{{{str(node.info.uuid).upper()}}}")
    assert matches(node, "") and not matches(node, "zzz")
