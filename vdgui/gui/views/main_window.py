"""The main window: the media library as a chain tree, the property panels, the
allocation map and jobs docks, menus, toolbar, status bar.

Everything that touches image files runs through :attr:`MainWindow.jobs` on a
worker thread: reading the library (:func:`vdgui.library.scan`), checking files
being opened, edits from the panels, and the operations the wizards prepare
(create, copy, merge, resize, compact, repair, re-link).  Each operation locks the
images it touches; the actions that would conflict are disabled meanwhile.  When a
job that changes the library or an image ends, the library is read again and the
tree swapped in; :attr:`MainWindow.refreshed` then fires (tests and the smoke test
wait for it).  The allocation map of the selected image's chain is read with
qasync (see :class:`~vdgui.gui.widgets.allocation_map.AllocationMapView`).
"""

from __future__ import annotations

import logging
import os
import platform
import uuid as uuidlib
from typing import Any, Callable, Iterable, Sequence

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import QModelIndex, QPoint, Qt, Signal, qVersion
from PySide6.QtGui import (QAction, QCloseEvent, QDragEnterEvent, QDragMoveEvent, QDropEvent,
                           QKeySequence)
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QDockWidget, QFileDialog,
                               QHeaderView, QLabel, QLineEdit, QMainWindow, QMenu, QMessageBox,
                               QSplitter, QTabWidget, QTreeView, QVBoxLayout, QWidget, QWizard)

from ... import __version__
from ...demo import ensure_demo_chain
from ...engine import NIL_UUID, Cancelled, Progress, VDError, backends
from ...engine import errors as vd
from ...engine.chain import ParentNotFound
from ...library import Library, LibraryTree, Node, check_new_entry
from .. import dialogs, edits, icons, operations
from ..errors import show_error
from ..jobs import ImageBusy, Job, JobRunner
from ..models.chain_model import ChainModel, Column, LibraryFilterProxy
from ..panels import (ChainPanel, CommentPanel, FlagsPanel, GeneralPanel, GeometryPanel, Panel,
                      UuidPanel)
from ..settings import Settings
from ..widgets.allocation_map import AllocationMapView
from ..wizards.compact import CompactWizard
from ..wizards.copy import CopyWizard
from ..wizards.create import NewImageWizard
from ..wizards.merge import MergeWizard, merge_chain
from ..wizards.relink import RelinkWizard
from ..wizards.repair import RepairWizard
from ..wizards.resize import ResizeWizard
from .jobs_panel import JobsPanel, JobsView

log = logging.getLogger(__name__)

#: How long closing the window waits for running jobs after cancelling them.
CLOSE_WAIT_MS = 10_000
#: Jobs longer than this ask for attention (taskbar) when they end unwatched.
NOTIFY_AFTER_S = 5.0


def image_file_filter() -> str:
    patterns = sorted({f"*.{ext}" for info in backends() for ext, _ in info.extensions})
    return f"Disk images ({' '.join(patterns)});;All files (*)"


def chain_paths(node: Node) -> list[str]:
    """The image and its ancestors, base first."""
    return [n.path for n in (*node.ancestors(), node)]


def linked_children(node: Node) -> list[str]:
    """Children in the library that refer to ``node`` by its UUID."""
    if node.info is None or node.info.uuid is None:
        return []
    return [c.path for c in node.children
            if c.info is not None and c.info.parent_uuid == node.info.uuid]


class MainWindow(QMainWindow):
    """vdgui's main window over a :class:`~vdgui.library.Library`."""

    #: The tree now shows the library as read by the latest scan.
    refreshed = Signal()
    #: An edit, creation or operation finished (a ChangeSet), or failed (the exception).
    edit_finished = Signal(object)
    edit_failed = Signal(object)

    def __init__(self, library: Library | None = None, settings: Settings | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.library = library if library is not None else Library()
        self.settings = settings if settings is not None else Settings()
        self.jobs = JobRunner(self)
        self._scan_generation = 0
        self._select_after_scan: str | None = None

        self.setWindowTitle("vdgui — virtual disk images")
        self.setWindowIcon(icons.app_icon())
        self.setAcceptDrops(True)

        self.model = ChainModel(self)
        self.proxy = LibraryFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.tree = self._make_tree()
        self.filter_edit = QLineEdit(self)
        self.filter_edit.setPlaceholderText("Filter by name or UUID")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setAccessibleName("Filter the images")
        self.filter_edit.setToolTip("Show only the images whose name, path or UUID contains "
                                    "this text (Ctrl+F)")
        self.filter_edit.textChanged.connect(self._on_filter)

        self.general_panel = GeneralPanel(self)
        self.chain_panel = ChainPanel(self)
        self.geometry_panel = GeometryPanel(self)
        self.uuid_panel = UuidPanel(self)
        self.comment_panel = CommentPanel(self)
        self.flags_panel = FlagsPanel(self)
        self.panels: list[Panel] = [self.general_panel, self.chain_panel, self.geometry_panel,
                                    self.uuid_panel, self.comment_panel, self.flags_panel]
        self.tabs = QTabWidget(self)
        self.tabs.setAccessibleName("Properties of the selected image")
        for panel in self.panels:
            self.tabs.addTab(panel, panel.title)
            panel.edit_requested.connect(self.run_edit)
            panel.set_node(None)

        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.filter_edit)
        left_layout.addWidget(self.tree, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)

        self.map_view = AllocationMapView(self)
        self.map_dock = self._dock("Allocation map", "allocation-map-dock", self.map_view)
        self.jobs_view = JobsView(self.jobs, self)
        self.jobs_dock = self._dock("Jobs", "jobs-dock", self.jobs_view)
        self.tabifyDockWidget(self.map_dock, self.jobs_dock)
        self.map_dock.raise_()

        self._make_actions()
        self._make_menus()
        self._make_toolbar()
        self._make_status_bar()
        self.chain_panel.set_fix_actions([self.locate_action, self.relink_action,
                                          self.new_uuid_action, self.remove_action])
        self._restore_settings()
        self.jobs.locks_changed.connect(self._update_actions)
        self.jobs.ended.connect(self._on_job_ended)
        self._update_actions()

    # -- construction ------------------------------------------------------------------

    def _make_tree(self) -> QTreeView:
        tree = QTreeView(self)
        tree.setModel(self.proxy)
        tree.setAccessibleName("Disk images")
        tree.setAccessibleDescription("Base images with the differencing images made "
                                      "from them beneath")
        tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        tree.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        tree.setUniformRowHeights(True)
        tree.setAlternatingRowColors(True)
        tree.setSortingEnabled(True)
        tree.sortByColumn(Column.NAME, Qt.SortOrder.AscendingOrder)
        tree.setExpandsOnDoubleClick(False)
        tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header = tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(Column.NAME, QHeaderView.ResizeMode.Stretch)
        for column in (Column.FORMAT, Column.VIRTUAL_SIZE, Column.ACTUAL_SIZE, Column.VARIANT):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        tree.selectionModel().currentChanged.connect(self._on_current_changed)
        tree.doubleClicked.connect(lambda _: self.tabs.setFocus())
        tree.customContextMenuRequested.connect(self._context_menu)
        return tree

    def _dock(self, title: str, name: str, widget: QWidget) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setAccessibleName(title)
        dock.setWidget(widget)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        return dock

    def _action(self, text: str, icon: str, slot: Callable[[], Any], tip: str,
                shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None
                ) -> QAction:
        action = QAction(icons.icon(icon), text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        action.setToolTip(f"{tip} ({keys})" if keys else tip)
        action.setStatusTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        self.addAction(action)
        return action

    def _make_actions(self) -> None:
        Key = QKeySequence.StandardKey
        self.open_action = self._action(
            "&Open…", "open", self.choose_files, "Open disk images and show their chains",
            Key.Open)
        self.new_action = self._action(
            "&New image…", "new-image", self.new_image, "Create a new disk image", Key.New)
        self.new_diff_action = self._action(
            "New &differencing image…", "new-diff", self.new_diff_image,
            "Create a differencing image on top of the selected image", "Ctrl+Shift+N")
        self.copy_action = self._action(
            "&Copy or convert…", "copy", self.copy_image,
            "Copy the selected image's chain into a new image, in any format, flattened or "
            "image by image", "Ctrl+Shift+C")
        self.merge_action = self._action(
            "&Merge…", "merge", self.merge_images,
            "Merge images of the selected chain into one and delete the others",
            "Ctrl+Shift+M")
        self.resize_action = self._action(
            "Re&size…", "resize", self.resize_image,
            "Change the virtual size of the selected image", "Ctrl+Shift+R")
        self.compact_action = self._action(
            "Com&pact…", "compact", self.compact_image,
            "Release the blocks the selected image does not need and shorten its file",
            "Ctrl+Shift+K")
        self.repair_action = self._action(
            "Chec&k and repair…", "repair", self.repair_image,
            "Check the selected image for damage; review the findings, then repair",
            "Ctrl+Shift+H")
        self.relink_action = self._action(
            "Re-&link to a parent…", "relink", self.relink_image,
            "Point the selected differencing image at another (moved or copied) parent",
            "Ctrl+Shift+L")
        self.relink_action.setObjectName("relink")
        self.locate_action = self._action(
            "&Search for the parent…", "locate", self.locate_parent,
            "Search a folder (and its subfolders) for the missing parent, by its UUID",
            "Ctrl+Shift+F")
        self.locate_action.setObjectName("locate")
        self.new_uuid_action = self._action(
            "Give a new &UUID", "new-uuid", self.give_new_uuid,
            "Give the selected image a new random UUID (its differencing images follow); "
            "the fix for a copied file with a duplicate UUID", "Ctrl+Shift+U")
        self.new_uuid_action.setObjectName("new-uuid")
        self.remove_action = self._action(
            "&Remove from library", "remove", self.remove_selected,
            "Remove the selected image (and the images made from it) from the list; "
            "the files are kept", Key.Delete)
        self.remove_action.setObjectName("remove")
        # Delete only when the tree has the focus: in a text field it deletes text.
        self.remove_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.removeAction(self.remove_action)
        self.tree.addAction(self.remove_action)
        self.delete_action = self._action(
            "&Delete files…", "delete", self.delete_selected,
            "Delete the selected image's files (and those of the images made from it) "
            "from the disk, after a confirmation", "Shift+Del")
        self.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.removeAction(self.delete_action)
        self.tree.addAction(self.delete_action)
        self.refresh_action = self._action(
            "Re&fresh", "refresh", self.refresh, "Read every image again", Key.Refresh)
        self.filter_action = self._action(
            "&Filter…", "filter", self.focus_filter,
            "Show only the images whose name, path or UUID contains some text", Key.Find)
        self.quit_action = self._action("&Quit", "quit", self.close, "Quit vdgui", "Ctrl+Q")
        self.quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        self.about_action = self._action("&About vdgui", "about", self.about,
                                         "Versions and credits", "Ctrl+F1")
        self.about_action.setMenuRole(QAction.MenuRole.AboutRole)
        self.map_toggle = self.map_dock.toggleViewAction()
        self.map_toggle.setIcon(icons.icon("map"))
        self.map_toggle.setShortcut(QKeySequence("Ctrl+Shift+A"))
        self.map_toggle.setToolTip("Show or hide the allocation map (Ctrl+Shift+A)")
        self.map_toggle.setStatusTip("Show or hide the allocation map")
        self.jobs_toggle = self.jobs_dock.toggleViewAction()
        self.jobs_toggle.setIcon(icons.icon("jobs"))
        self.jobs_toggle.setShortcut(QKeySequence("Ctrl+J"))
        self.jobs_toggle.setToolTip("Show or hide the list of operations (Ctrl+J)")
        self.jobs_toggle.setStatusTip("Show or hide the list of operations")
        self.image_actions = [self.new_diff_action, self.copy_action, self.merge_action,
                              self.resize_action, self.compact_action, self.repair_action,
                              self.relink_action, self.locate_action, self.new_uuid_action]

    @property
    def all_actions(self) -> list[QAction]:
        """Every action of the window (for the shortcut and tooltip checks)."""
        return [self.open_action, self.new_action, *self.image_actions, self.remove_action,
                self.delete_action, self.refresh_action, self.filter_action,
                self.map_toggle, self.jobs_toggle, self.quit_action, self.about_action]

    def _make_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addSeparator()
        file_menu.addAction(self.new_action)
        file_menu.addAction(self.new_diff_action)
        file_menu.addSeparator()
        file_menu.addAction(self.remove_action)
        file_menu.addAction(self.delete_action)
        file_menu.addAction(self.refresh_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        image_menu = self.menuBar().addMenu("&Image")
        for action in (self.copy_action, self.merge_action, self.resize_action,
                       self.compact_action, self.repair_action, None, self.relink_action,
                       self.locate_action, self.new_uuid_action):
            if action is None:
                image_menu.addSeparator()
            else:
                image_menu.addAction(action)
        view_menu = self.menuBar().addMenu("&View")
        view_menu.addAction(self.filter_action)
        view_menu.addAction(self.map_toggle)
        view_menu.addAction(self.jobs_toggle)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self.about_action)

    def _make_toolbar(self) -> None:
        toolbar = self.addToolBar("Main toolbar")
        toolbar.setObjectName("main-toolbar")
        toolbar.setAccessibleName("Main toolbar")
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in (self.open_action, self.new_action, self.new_diff_action, None,
                       self.copy_action, self.merge_action, self.resize_action,
                       self.compact_action, self.repair_action, None, self.remove_action,
                       self.refresh_action):
            if action is None:
                toolbar.addSeparator()
            else:
                toolbar.addAction(action)

    def _make_status_bar(self) -> None:
        bar = self.statusBar()
        self.jobs_panel = JobsPanel(self.jobs, bar)
        bar.addPermanentWidget(self.jobs_panel)
        self.count_label = QLabel(bar)
        self.count_label.setAccessibleName("Library summary")
        bar.addPermanentWidget(self.count_label)
        read_only = QLabel("Read-only browsing", bar)
        read_only.setToolTip("Images are opened read-only to show them; vdgui writes to "
                             "an image only when you apply a change or run an operation.")
        bar.addPermanentWidget(read_only)

    def _restore_settings(self) -> None:
        geometry = self.settings.window_geometry
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(1100, 720)
        state = self.settings.window_state
        if state is not None:
            self.restoreState(state)
        splitter = self.settings.splitter_state
        if splitter is None or not self.splitter.restoreState(splitter):
            self.splitter.setSizes([600, 500])
        self.filter_edit.setText(self.settings.filter_text)

    # -- selection ---------------------------------------------------------------------

    def current_node(self) -> Node | None:
        return self.model.node(self.proxy.mapToSource(self.tree.currentIndex()))

    def select_path(self, path: str) -> bool:
        """Select the image at ``path`` in the tree; False when it is not shown."""
        source = self.model.index_for_path(path)
        if not source.isValid():
            return False
        index = self.proxy.mapFromSource(source)
        if not index.isValid():
            return False
        self.tree.setCurrentIndex(index)
        self.tree.scrollTo(index)
        return True

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        node = self.model.node(self.proxy.mapToSource(current))
        for panel in self.panels:
            panel.set_node(node)
        self._update_actions()
        if node is not None and node.ok:
            self.map_view.show_chain(node.path, self.library.search_paths)
        elif node is not None:
            self.map_view.show_chain(None)
            self.map_view.status.setText("The allocation map needs the whole chain: "
                                         f"{node.error.message if node.error else ''}.")
        else:
            self.map_view.show_chain(None)

    def _on_filter(self, text: str) -> None:
        self.proxy.set_text(text)
        self.settings.filter_text = text
        self.tree.expandAll()

    def focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    def _free(self, writes: Iterable[str] = (), reads: Iterable[str] = ()) -> bool:
        return not self.jobs.conflicts(writes, reads)

    def _update_actions(self) -> None:
        node = self.current_node()
        for action in self.image_actions + [self.delete_action]:
            action.setEnabled(False)
        self.remove_action.setEnabled(node is not None)
        if node is None:
            return
        info = node.info
        chain = chain_paths(node)
        below = chain[:-1]
        writable_top = self._free([node.path], below)
        if node.ok:
            self.new_diff_action.setEnabled(self._free(reads=chain))
            self.copy_action.setEnabled(self._free(reads=chain))
            merge = [n.path for n in merge_chain(node)]
            self.merge_action.setEnabled(len(merge) > 1 and self._free(merge))
            self.resize_action.setEnabled(writable_top)
            self.compact_action.setEnabled(writable_top)
        readable = info is not None or not isinstance(node.error, vd.FileNotFound)
        self.repair_action.setEnabled(readable and self._free([node.path]))
        if info is not None:
            self.relink_action.setEnabled(info.is_diff and self._free([node.path]))
            self.locate_action.setEnabled(
                isinstance(node.error, ParentNotFound)
                and info.parent_uuid not in (None, NIL_UUID))
            self.new_uuid_action.setEnabled(
                info.stores_uuids and self._free([node.path, *linked_children(node)]))
            family = [node.path, *(d.path for d in node.descendants())]
            self.delete_action.setEnabled(self._free(family))

    # -- the library -------------------------------------------------------------------

    def refresh(self, select: str | None = None) -> Job:
        """Read every image of the library again (on a worker thread)."""
        current = self.current_node()
        self._select_after_scan = select or self._select_after_scan or (
            current.path if current else None)
        self._scan_generation += 1
        generation = self._scan_generation
        library = self.library
        job = self.jobs.run("Reading the images", lambda progress: library.scan(progress),
                            background=True, unit="images")
        job.finished.connect(lambda tree: self._apply_tree(tree, generation))
        job.failed.connect(lambda exc: self._on_failed(exc, "read the library"))
        return job

    def _apply_tree(self, tree: LibraryTree, generation: int) -> None:
        if generation != self._scan_generation:
            return  # a newer scan is on its way
        select, self._select_after_scan = self._select_after_scan, None
        self.model.set_tree(tree)
        self.tree.expandAll()
        if not (select and self.select_path(select)):
            self._on_current_changed(self.tree.currentIndex(), QModelIndex())
        broken = sum(1 for node in tree.nodes.values() if node.error is not None)
        chains = len(tree.roots)
        text = (f"{len(tree)} image{'s' if len(tree) != 1 else ''} in {chains} "
                f"chain{'s' if chains != 1 else ''}")
        if broken:
            text += f", {broken} with problems"
        duplicates = len(tree.duplicates)
        if duplicates:
            text += f", {duplicates} duplicate UUID{'s' if duplicates > 1 else ''}"
        self.count_label.setText(text)
        self.refreshed.emit()

    def open_paths(self, paths: Iterable[str | os.PathLike[str]]) -> Job:
        """Open images (and with them their chains) into the library."""
        paths = [os.path.abspath(os.fspath(p)) for p in paths]
        search_paths = self.library.search_paths

        def check(progress: Progress) -> list[tuple[str, VDError | None, bool]]:
            results = []
            for done, path in enumerate(paths):
                progress.update(done, len(paths), f"checking {os.path.basename(path)}")
                try:
                    results.append((path, check_new_entry(path, search_paths), True))
                except VDError as exc:
                    results.append((path, exc, False))
            return results

        job = self.jobs.run("Opening images", check, background=True, unit="images")
        job.finished.connect(self._on_opened)
        job.failed.connect(lambda exc: self._on_failed(exc, "open the images"))
        return job

    def _on_opened(self, results: list[tuple[str, VDError | None, bool]]) -> None:
        addable = [path for path, _, ok in results if ok]
        for path in addable:
            self.settings.add_recent_file(path)
        if addable:
            self.settings.last_folder = os.path.dirname(addable[-1])
        try:
            self.library.add(addable)
        except OSError as exc:
            show_error(self, exc, "save the library")
        self.refresh(select=addable[-1] if addable else None)
        opened = len(addable)
        self.statusBar().showMessage(f"Opened {opened} image{'s' if opened != 1 else ''}",
                                     5000)
        for path, error, _ in results:
            if error is not None:
                show_error(self, error, "open")

    def choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open disk images",
                                                self.settings.last_folder,
                                                image_file_filter())
        if paths:
            self.open_paths(paths)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_files
        for path in recent:
            action = self.recent_menu.addAction(os.path.basename(path))
            action.setToolTip(path)
            action.setStatusTip(path)
            action.triggered.connect(lambda _=False, p=path: self.open_paths([p]))
        if recent:
            self.recent_menu.addSeparator()
        clear = self.recent_menu.addAction("&Clear the list")
        clear.setEnabled(bool(recent))
        clear.triggered.connect(self.settings.clear_recent_files)

    def remove_selected(self) -> list[str]:
        """Remove the selected image and what is built on it from the library."""
        node = self.current_node()
        if node is None:
            return []
        entries = self.model.tree.entries_through(node)
        try:
            removed = self.library.remove(entries)
        except OSError as exc:
            show_error(self, exc, "save the library")
            return []
        parent = node.parent.path if node.parent else None
        self.refresh(select=parent)
        self.statusBar().showMessage(
            f"Removed {len(removed)} entr{'ies' if len(removed) != 1 else 'y'} from the "
            f"library; no file was deleted", 5000)
        return removed

    def delete_selected(self) -> Job | None:
        """Delete the selected image's files, and those built on it, after asking."""
        node = self.current_node()
        if node is None or node.info is None:
            return None
        doomed = [*reversed(node.descendants()), node]  # children before their parents
        names = "\n".join(n.path for n in reversed(doomed))
        accepted, _ = dialogs.confirm(
            self, "Delete files?",
            f"Delete {len(doomed)} image file{'s' if len(doomed) > 1 else ''} from the disk?",
            f"{names}\n\nThis cannot be undone. The images made from it are deleted too, as "
            f"they cannot work without it.", action="Delete")
        if not accepted:
            return None
        paths = [n.path for n in doomed]
        return self.run_operation(
            f"Deleting {node.name}", "delete",
            lambda progress: operations.delete_images(paths, progress), writes=paths,
            unit="images")

    def open_demo(self, folder: str | os.PathLike[str] | None = None) -> Job:
        """Create the demo chain when needed, open it and select its top image."""
        job = self.jobs.run("Preparing the demo chain",
                            lambda progress: ensure_demo_chain(folder, progress),
                            background=True)
        job.finished.connect(lambda top: self._add_and_select(str(top)))
        job.failed.connect(lambda exc: self._on_failed(exc, "create the demo chain"))
        return job

    def _add_and_select(self, path: str) -> None:
        try:
            self.library.add([path])
        except OSError as exc:
            show_error(self, exc, "save the library")
        self.refresh(select=path)

    # -- changes -----------------------------------------------------------------------

    def run_operation(self, title: str, doing: str, fn: Callable[[Progress], Any],
                      writes: Sequence[str] = (), reads: Sequence[str] = (),
                      unit: str = "bytes") -> Job | None:
        """Run an operation that returns a ChangeSet; None when an image is busy."""
        try:
            job = self.jobs.run(title, fn, writes=writes, reads=reads, unit=unit)
        except ImageBusy as exc:
            show_error(self, exc, doing)
            return None
        job.finished.connect(lambda changes: self._on_changed(changes, title))
        job.failed.connect(lambda exc: self._on_edit_failed(exc, doing))
        return job

    def run_edit(self, edit: edits.Edit) -> Job | None:
        return self.run_operation(edit.title, edit.doing, edit.run, edit.writes, edit.reads)

    def _on_changed(self, changes: edits.ChangeSet, title: str) -> None:
        try:
            if changes.created:
                self.library.add(changes.created)
            for path in changes.removed:
                # A merged-away image that was an entry: the one that took its data
                # (the selection) replaces it; a deleted one just goes.
                if not (changes.select and self.library.replace(path, changes.select)):
                    self.library.remove([path])
        except OSError as exc:
            show_error(self, exc, "save the library")
        self.refresh(select=changes.select)
        message = changes.summary or f"Done: {title[:1].lower()}{title[1:]}"
        self.statusBar().showMessage(message, 8000)
        self.edit_finished.emit(changes)

    def _on_edit_failed(self, exc: BaseException, doing: str) -> None:
        self.refresh()  # show what the image really holds now, re-enable the panels
        self._on_failed(exc, doing)
        self.edit_failed.emit(exc)

    def _on_failed(self, exc: BaseException, doing: str) -> None:
        if isinstance(exc, Cancelled):
            self.statusBar().showMessage("Cancelled; nothing was changed", 5000)
            return
        show_error(self, exc, doing)

    def _on_job_ended(self, job: Job) -> None:
        if job.background or job.elapsed < NOTIFY_AFTER_S or self.isActiveWindow():
            return
        QApplication.alert(self)  # a long job ended while the person looked elsewhere

    # -- wizards -----------------------------------------------------------------------

    def _open_wizard(self, wizard: QWizard, on_accept: Callable[[], Any]) -> QWizard:
        """Show a wizard (not modal to the application; returns at once)."""
        wizard.accepted.connect(on_accept)
        wizard.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        wizard.open()
        return wizard

    def new_image(self) -> NewImageWizard:
        wizard = NewImageWizard(self, folder=self.settings.last_folder)
        self._open_wizard(wizard, lambda: self.create_image(wizard.params()))
        return wizard

    def new_diff_image(self) -> NewImageWizard | None:
        node = self.current_node()
        if node is None or not node.ok:
            return None
        wizard = NewImageWizard(self, parent_image=node,
                                search_paths=self.library.search_paths)
        self._open_wizard(wizard, lambda: self.create_image(wizard.params()))
        return wizard

    def create_image(self, params: edits.CreateParams) -> Job | None:
        self.settings.last_folder = os.path.dirname(params.path)
        name = os.path.basename(params.path)
        parent = self.model.tree.find(params.parent) if params.parent else None
        reads = chain_paths(parent) if parent is not None else []
        return self.run_edit(edits.Edit(
            f"Creating {name}", "create", lambda progress: edits.create_image(params, progress),
            writes=(params.path,), reads=tuple(reads)))

    def copy_image(self) -> CopyWizard | None:
        node = self.current_node()
        if node is None or not node.ok:
            return None
        wizard = CopyWizard(node, self.jobs, self, self.library.search_paths)

        def start() -> None:
            params = wizard.params()
            self.run_operation(f"Copying {node.name}", "copy",
                               lambda progress: operations.copy_image(params, progress),
                               writes=params.targets(), reads=list(params.chain)
                               or chain_paths(node))

        self._open_wizard(wizard, start)
        return wizard

    def merge_images(self) -> MergeWizard | None:
        node = self.current_node()
        if node is None or not node.ok or len(merge_chain(node)) < 2:
            return None
        wizard = MergeWizard(node, self.jobs, self, self.library.search_paths)

        def start() -> None:
            params = wizard.params()
            lo = min(params.source, params.target)
            hi = max(params.source, params.target)
            changed = list(params.chain[lo:hi + 2])  # the range, and the child re-linked
            self.run_operation(
                f"Merging into {os.path.basename(params.chain[params.target])}", "merge",
                lambda progress: operations.merge_images(params, progress), writes=changed,
                reads=[p for p in params.chain if p not in changed])

        self._open_wizard(wizard, start)
        return wizard

    def resize_image(self) -> ResizeWizard | None:
        node = self.current_node()
        if node is None or not node.ok:
            return None
        wizard = ResizeWizard(node, self.jobs, self, self.library.search_paths)

        def start() -> None:
            params = wizard.params()
            self.run_operation(f"Resizing {node.name}", "resize",
                               lambda progress: operations.resize_image(params, progress),
                               writes=[node.path], reads=chain_paths(node)[:-1])

        self._open_wizard(wizard, start)
        return wizard

    def compact_image(self) -> CompactWizard | None:
        node = self.current_node()
        if node is None or not node.ok:
            return None
        wizard = CompactWizard(node, self.jobs, self, self.library.search_paths)

        def start() -> None:
            params = wizard.params()
            self.run_operation(f"Compacting {node.name}", "compact",
                               lambda progress: operations.compact_image(params, progress),
                               writes=[node.path], reads=chain_paths(node)[:-1])

        self._open_wizard(wizard, start)
        return wizard

    def repair_image(self) -> RepairWizard | None:
        node = self.current_node()
        if node is None:
            return None
        wizard = RepairWizard(node, self.jobs, self, self.library.search_paths)
        wizard.repaired.connect(lambda changes: self._on_changed(changes, "Repair"))
        wizard.repair_failed.connect(self._on_edit_failed_quietly)
        wizard.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        wizard.open()
        return wizard

    def _on_edit_failed_quietly(self, exc: BaseException) -> None:
        """A failure a wizard already explains on its page: only refresh."""
        self.refresh()
        self.edit_failed.emit(exc)

    def relink_image(self) -> RelinkWizard | None:
        node = self.current_node()
        if node is None or node.info is None or not node.info.is_diff:
            return None
        proposal = node.parent.path if node.parent is not None else None
        wizard = RelinkWizard(node, self, proposal, image_file_filter(),
                              self.library.search_paths)

        def start() -> None:
            params = wizard.params()
            self.run_operation(f"Re-linking {node.name}", "re-link",
                               lambda progress: operations.relink(params, progress),
                               writes=[node.path], reads=[params.new_parent])

        self._open_wizard(wizard, start)
        return wizard

    # -- guided fixes ------------------------------------------------------------------

    def locate_parent(self, folder: str | None = None) -> Job | None:
        """Search ``folder`` (asked for when None) for the selected image's parent."""
        node = self.current_node()
        if node is None or node.info is None or node.info.parent_uuid in (None, NIL_UUID):
            return None
        if folder is None:
            folder = QFileDialog.getExistingDirectory(
                self, f"Search which folder for the parent of {node.name}?",
                os.path.dirname(node.path))
            if not folder:
                return None
        wanted = node.info.parent_uuid
        try:
            job = self.jobs.run(f"Searching for the parent of {node.name}",
                                lambda progress: operations.find_by_uuid(
                                    wanted, folder, progress, exclude=[node.path]),
                                unit="folders")
        except ImageBusy as exc:
            show_error(self, exc, "search")
            return None
        job.finished.connect(lambda found: self._on_parent_found(found, node.path, folder))
        job.failed.connect(lambda exc: self._on_failed(exc, "search for the parent"))
        return job

    def _on_parent_found(self, found: str | None, child: str, folder: str) -> None:
        if found is None:
            dialogs.refuse(self, "Parent not found",
                           f"No image in {folder} or its subfolders has the UUID the "
                           f"parent of {os.path.basename(child)} must have.",
                           "Try another folder, or choose the parent file yourself "
                           "(Re-link to a parent).")
            return
        try:
            self.library.add_search_path(os.path.dirname(found))
        except OSError as exc:
            show_error(self, exc, "save the library")
        self.statusBar().showMessage(f"Found the parent: {found}; its folder is now searched "
                                     f"for parents", 8000)
        self.refresh(select=child)

    def give_new_uuid(self) -> Job | None:
        """Give the selected image a new UUID, keeping its children linked.

        For a duplicate (the copy-by-hand trap) this is the one-click fix; otherwise,
        since programs that know the image by its UUID will not find it any more,
        it asks first.
        """
        node = self.current_node()
        if node is None or node.info is None or not node.info.stores_uuids:
            return None
        if not node.same_uuid:
            accepted, _ = dialogs.confirm(
                self, "Give a new UUID?", f"Give “{node.name}” a new random UUID?",
                "Programs that know the image by its UUID (such as VirtualBox's media "
                "registry) will no longer recognise it. Its differencing images are "
                "updated.", action="Change")
            if not accepted:
                return None
        children = linked_children(node)
        new = uuidlib.uuid4()
        return self.run_edit(edits.Edit(
            f"Giving {node.name} a new UUID", "change the UUID of",
            lambda progress: edits.set_uuids(node.path, {"uuid": new}, children),
            writes=(node.path, *children)))

    # -- help --------------------------------------------------------------------------

    @staticmethod
    def about_text() -> str:
        formats = ", ".join(info.name for info in backends())
        return (f"<h3>vdgui {__version__}</h3>"
                "<p>A manager for virtual disk images, with VirtualBox's semantics and no "
                "VirtualBox needed.</p>"
                f"<p>Formats: {formats}</p>"
                f"<p>Python {platform.python_version()}<br>"
                f"Qt {qVersion()}, PySide6 {pyside_version}<br>"
                f"{platform.system()} {platform.release()}</p>"
                "<p>Licensed under the GNU GPL, version 3 or later.</p>")

    def about(self) -> None:
        box = QMessageBox(self)
        box.setWindowTitle("About vdgui")
        box.setIconPixmap(icons.app_icon().pixmap(64, 64))
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(self.about_text())
        box.setAccessibleName("About vdgui")
        box.exec()

    # -- context menu ------------------------------------------------------------------

    def _context_menu(self, pos: QPoint) -> None:
        menu = QMenu(self)
        if self.tree.indexAt(pos).isValid():
            actions: Sequence[QAction | None] = (
                self.new_diff_action, self.copy_action, self.merge_action,
                self.resize_action, self.compact_action, self.repair_action, None,
                self.relink_action, self.locate_action, self.new_uuid_action, None,
                self.remove_action, self.delete_action, self.refresh_action)
        else:
            actions = (self.open_action, self.new_action, None, self.filter_action,
                       self.refresh_action)
        for action in actions:
            if action is None:
                menu.addSeparator()
            elif action.isEnabled() or action in (self.remove_action, self.refresh_action):
                menu.addAction(action)
        menu.popup(self.tree.viewport().mapToGlobal(pos))

    # -- Qt overrides ------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    def closeEvent(self, event: QCloseEvent) -> None:
        running = [job for job in self.jobs.active
                   if not job.background and not job.cancelled]
        if running:
            titles = "\n".join(job.title for job in running)
            accepted, _ = dialogs.confirm(
                self, "Operations are running",
                f"{len(running)} operation{'s are' if len(running) > 1 else ' is'} still "
                f"running:\n{titles}",
                "Quitting cancels them; each stops at a safe point and leaves the images as "
                "they were.", action="Cancel them and quit")
            if not accepted:
                event.ignore()
                return
        self.settings.window_geometry = self.saveGeometry()
        self.settings.window_state = self.saveState()
        self.settings.splitter_state = self.splitter.saveState()
        self.settings.sync()
        self.jobs.cancel_all()
        self.map_view.shutdown()
        if not self.jobs.wait(CLOSE_WAIT_MS):
            log.warning("some operations were still running when the window closed")
        super().closeEvent(event)
