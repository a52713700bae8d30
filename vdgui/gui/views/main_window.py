"""The main window: the chain tree, the property panels, menus, toolbar, status bar.

Everything that touches image files runs through :attr:`MainWindow.jobs` on a
worker thread: reading the library (:func:`vdgui.library.scan`), checking files
being opened, edits from the panels and creating images.  When a job that changes
the library or an image ends, the library is read again and the tree swapped in;
:attr:`MainWindow.refreshed` then fires (tests and the smoke test wait for it).
"""

from __future__ import annotations

import logging
import os
import platform
from typing import Any, Callable, Iterable, Sequence

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import QModelIndex, QPoint, QSortFilterProxyModel, Qt, Signal, qVersion
from PySide6.QtGui import (QAction, QCloseEvent, QDragEnterEvent, QDragMoveEvent, QDropEvent,
                           QKeySequence)
from PySide6.QtWidgets import (QAbstractItemView, QFileDialog, QHeaderView, QLabel,
                               QMainWindow, QMenu, QMessageBox, QSplitter, QTabWidget,
                               QTreeView, QWidget)

from ... import __version__
from ...demo import ensure_demo_chain
from ...engine import Cancelled, VDError, backends
from ...library import Library, LibraryTree, Node, check_new_entry, scan
from .. import edits, icons
from ..errors import show_error
from ..jobs import Job, JobRunner
from ..models.chain_model import SORT_ROLE, ChainModel, Column
from ..panels import (CommentPanel, FlagsPanel, GeneralPanel, GeometryPanel, Panel,
                      UuidPanel)
from ..settings import Settings
from ..wizards.create import NewImageWizard
from .jobs_panel import JobsPanel

log = logging.getLogger(__name__)

#: How long closing the window waits for running jobs after cancelling them.
CLOSE_WAIT_MS = 10_000


def image_file_filter() -> str:
    patterns = sorted({f"*.{ext}" for info in backends() for ext, _ in info.extensions})
    return f"Disk images ({' '.join(patterns)});;All files (*)"


class MainWindow(QMainWindow):
    """vdgui's main window over a :class:`~vdgui.library.Library`."""

    #: The tree now shows the library as read by the latest scan.
    refreshed = Signal()
    #: An edit or a creation finished (a ChangeSet), or failed (the exception).
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
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setRecursiveFilteringEnabled(True)
        self.tree = self._make_tree()

        self.general_panel = GeneralPanel(self)
        self.geometry_panel = GeometryPanel(self)
        self.uuid_panel = UuidPanel(self)
        self.comment_panel = CommentPanel(self)
        self.flags_panel = FlagsPanel(self)
        self.panels: list[Panel] = [self.general_panel, self.geometry_panel, self.uuid_panel,
                                    self.comment_panel, self.flags_panel]
        self.tabs = QTabWidget(self)
        self.tabs.setAccessibleName("Properties of the selected image")
        for panel in self.panels:
            self.tabs.addTab(panel, panel.title)
            panel.edit_requested.connect(self.run_edit)
            panel.set_node(None)

        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.addWidget(self.tree)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)

        self._make_actions()
        self._make_menus()
        self._make_toolbar()
        self._make_status_bar()
        self._restore_settings()
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
        self.remove_action = self._action(
            "&Remove from library", "remove", self.remove_selected,
            "Remove the selected image (and the images made from it) from the list; "
            "the files are kept", Key.Delete)
        # Delete only when the tree has the focus: in a text field it deletes text.
        self.remove_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.removeAction(self.remove_action)
        self.tree.addAction(self.remove_action)
        self.refresh_action = self._action(
            "Re&fresh", "refresh", self.refresh, "Read every image again", Key.Refresh)
        self.quit_action = self._action("&Quit", "quit", self.close, "Quit vdgui", "Ctrl+Q")
        self.quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        self.about_action = self._action("&About vdgui", "about", self.about,
                                         "Versions and credits")
        self.about_action.setMenuRole(QAction.MenuRole.AboutRole)

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
        file_menu.addAction(self.refresh_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self.about_action)

    def _make_toolbar(self) -> None:
        toolbar = self.addToolBar("Main toolbar")
        toolbar.setObjectName("main-toolbar")
        toolbar.setAccessibleName("Main toolbar")
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in (self.open_action, self.new_action, self.new_diff_action,
                       self.remove_action, self.refresh_action):
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
                             "an image only when you apply a change or create one.")
        bar.addPermanentWidget(read_only)

    def _restore_settings(self) -> None:
        geometry = self.settings.window_geometry
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(1000, 600)
        state = self.settings.window_state
        if state is not None:
            self.restoreState(state)
        splitter = self.settings.splitter_state
        if splitter is None or not self.splitter.restoreState(splitter):
            self.splitter.setSizes([560, 440])

    # -- selection ---------------------------------------------------------------------

    def current_node(self) -> Node | None:
        return self.model.node(self.proxy.mapToSource(self.tree.currentIndex()))

    def select_path(self, path: str) -> bool:
        """Select the image at ``path`` in the tree; False when it is not shown."""
        source = self.model.index_for_path(path)
        if not source.isValid():
            return False
        index = self.proxy.mapFromSource(source)
        self.tree.setCurrentIndex(index)
        self.tree.scrollTo(index)
        return True

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        node = self.model.node(self.proxy.mapToSource(current))
        for panel in self.panels:
            panel.set_node(node)
        self._update_actions()

    def _update_actions(self) -> None:
        node = self.current_node()
        self.remove_action.setEnabled(node is not None)
        self.new_diff_action.setEnabled(node is not None and node.ok)

    # -- the library -------------------------------------------------------------------

    def refresh(self, select: str | None = None) -> Job:
        """Read every image of the library again (on a worker thread)."""
        current = self.current_node()
        self._select_after_scan = select or self._select_after_scan or (
            current.path if current else None)
        self._scan_generation += 1
        generation = self._scan_generation
        entries = self.library.entries
        job = self.jobs.run("Reading the images",
                            lambda progress: scan(entries, progress=progress))
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
        self.count_label.setText(text)
        self.refreshed.emit()

    def open_paths(self, paths: Iterable[str | os.PathLike[str]]) -> Job:
        """Open images (and with them their chains) into the library."""
        paths = [os.path.abspath(os.fspath(p)) for p in paths]

        def check(progress: Any) -> list[tuple[str, VDError | None, bool]]:
            results = []
            for done, path in enumerate(paths):
                progress.update(done, len(paths), f"checking {os.path.basename(path)}")
                try:
                    results.append((path, check_new_entry(path), True))
                except VDError as exc:
                    results.append((path, exc, False))
            return results

        job = self.jobs.run("Opening images", check)
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

    def open_demo(self, folder: str | os.PathLike[str] | None = None) -> Job:
        """Create the demo chain when needed, open it and select its top image."""
        job = self.jobs.run("Preparing the demo chain",
                            lambda progress: ensure_demo_chain(folder, progress))
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

    def run_edit(self, edit: edits.Edit) -> Job:
        job = self.jobs.run(edit.title, edit.run)
        job.finished.connect(lambda changes: self._on_changed(changes, edit.title))
        job.failed.connect(lambda exc: self._on_edit_failed(exc, edit.doing))
        return job

    def _on_changed(self, changes: edits.ChangeSet, title: str) -> None:
        if changes.created:
            try:
                self.library.add(changes.created)
            except OSError as exc:
                show_error(self, exc, "save the library")
        self.refresh(select=changes.select)
        self.statusBar().showMessage(f"Done: {title[:1].lower()}{title[1:]}", 5000)
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

    def new_image(self) -> NewImageWizard:
        """Show the New Image wizard (not modal to the application; returns at once)."""
        wizard = NewImageWizard(self, folder=self.settings.last_folder)
        wizard.accepted.connect(lambda: self.create_image(wizard.params()))
        wizard.open()
        return wizard

    def new_diff_image(self) -> NewImageWizard | None:
        node = self.current_node()
        if node is None or not node.ok:
            return None
        wizard = NewImageWizard(self, parent_image=node)
        wizard.accepted.connect(lambda: self.create_image(wizard.params()))
        wizard.open()
        return wizard

    def create_image(self, params: edits.CreateParams) -> Job:
        self.settings.last_folder = os.path.dirname(params.path)
        name = os.path.basename(params.path)
        return self.run_edit(edits.Edit(f"Creating {name}", "create",
                                        lambda progress: edits.create_image(params, progress)))

    # -- help --------------------------------------------------------------------------

    @staticmethod
    def about_text() -> str:
        return (f"<h3>vdgui {__version__}</h3>"
                "<p>A manager for virtual disk images: VDI, VMDK, VHD, VHDX, QCOW2 and "
                "more, with VirtualBox's semantics and no VirtualBox needed.</p>"
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
            actions: Sequence[QAction | None] = (self.new_diff_action, None,
                                                  self.remove_action, self.refresh_action)
        else:
            actions = (self.open_action, self.new_action, None, self.refresh_action)
        for action in actions:
            if action is None:
                menu.addSeparator()
            else:
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
        self.settings.window_geometry = self.saveGeometry()
        self.settings.window_state = self.saveState()
        self.settings.splitter_state = self.splitter.saveState()
        self.settings.sync()
        self.jobs.cancel_all()
        if not self.jobs.wait(CLOSE_WAIT_MS):
            log.warning("some operations were still running when the window closed")
        super().closeEvent(event)
