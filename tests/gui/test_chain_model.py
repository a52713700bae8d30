"""The chain tree model: structure, roles, and Qt's model consistency checks."""

from __future__ import annotations

import os

from PySide6.QtCore import QModelIndex, Qt

from vdgui.gui.models.chain_model import NODE_ROLE, PATH_ROLE, SORT_ROLE, ChainModel, Column
from vdgui.library import scan

from .helpers import MIB, make_chain


def test_empty_model_passes_modeltester(qtmodeltester):
    model = ChainModel()
    qtmodeltester.check(model)
    assert model.rowCount() == 0


def test_model_of_two_chains_and_broken_entries(qtmodeltester, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = make_chain(tmp_path / "a")
    b = make_chain(tmp_path / "b")
    os.unlink(b[1])  # b's top loses its parent
    missing = tmp_path / "gone.vdi"
    model = ChainModel()
    model.set_tree(scan([str(a[2]), str(a[1]), str(b[2]), str(missing)]))
    qtmodeltester.check(model)

    names = sorted(model.data(model.index(r, 0)) for r in range(model.rowCount()))
    assert names == ["base.vdi", "diff2.vdi", "gone.vdi"]
    by_name = {model.data(model.index(r, 0)): model.index(r, 0)
               for r in range(model.rowCount())}
    base = by_name["base.vdi"]
    assert model.rowCount(base) == 1 and model.rowCount(base.siblingAtColumn(1)) == 0
    diff1 = model.index(0, 0, base)
    assert model.parent(diff1) == base
    assert model.data(diff1, PATH_ROLE) == str(a[1])
    assert model.data(diff1, NODE_ROLE).in_library  # opened on its own too
    # Broken ones are marked, with the reason.
    orphan = by_name["diff2.vdi"]
    assert "parent" in model.data(orphan, Qt.ItemDataRole.ToolTipRole)
    assert "problem" in model.data(orphan, Qt.ItemDataRole.AccessibleTextRole)
    assert model.data(by_name["gone.vdi"].siblingAtColumn(Column.FORMAT)) == "inaccessible"
    assert not model.data(orphan, Qt.ItemDataRole.DecorationRole).isNull()


def test_sizes_sort_as_numbers(tmp_path):
    (tmp_path / "x").mkdir()
    chain = make_chain(tmp_path / "x")
    model = ChainModel()
    model.set_tree(scan([str(chain[0])]))
    index = model.index(0, Column.VIRTUAL_SIZE)
    assert model.data(index, SORT_ROLE) == 8 * MIB
    assert model.data(index) == "8 MiB"
    assert model.headerData(Column.ACTUAL_SIZE, Qt.Orientation.Horizontal) == "Actual size"
    assert model.index(5, 0) == QModelIndex()
