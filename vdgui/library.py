"""The media library: the disk images a person has opened, grouped into chains.

This is vdgui's answer to VirtualBox's media registry, without its pitfalls: the
library stores only *which files* were opened (a JSON list of paths); everything
else -- formats, sizes, UUIDs, how the images chain together -- is read from the
files themselves by :func:`scan`, with read-only ``INFO`` opens that never change a
byte.  A file that has gone missing or is damaged stays in the library and is
reported as inaccessible, with the reason.

Beyond what each file says about itself, :func:`scan` checks what only the library
can see: a differencing image whose stored parent UUID does not match the image
found as its parent (:class:`~vdgui.engine.errors.UuidMismatch` on the child), and
two files carrying the same UUID (the classic copy-by-hand trap, listed in
:attr:`LibraryTree.duplicates`).

Qt-free: the desktop application and the ``vdimg`` command line share it.

Where things live: the library file is ``library.json`` in the user data directory
(``platformdirs.user_data_dir("vdgui")``).  Setting ``VDGUI_HOME`` moves the data,
configuration and log directories under that one folder (tests and the smoke test
use it so they never touch the real home directory).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence, TypeVar

import platformdirs

from .engine import (NIL_UUID, Capability, Disk, DiskType, Geometry, ImageFlags, OpenFlags,
                     Progress, VDError, backend_info, discover_chain, find_parent, probe)
from .engine.chain import MAX_CHAIN_DEPTH
from .engine.errors import Corrupted, GeometryNotSet, NotSupported, UuidMismatch

log = logging.getLogger(__name__)

#: Environment variable that relocates every per-user directory (data, config, log).
ENV_HOME = "VDGUI_HOME"

APP_NAME = "vdgui"
LIBRARY_FILE = "library.json"
FORMAT_VERSION = 1

#: How the library opens images for browsing: never writes, skips linkage checks.
BROWSE_FLAGS = OpenFlags.READONLY | OpenFlags.INFO


class ChainBroken(VDError):
    """An image is fine, but one it is built on is not: its chain cannot be opened."""

    status = "VERR_VD_IMAGE_NOT_FOUND"


def app_dir(kind: Literal["data", "config", "log"]) -> Path:
    """The per-user directory of ``kind`` (not created)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home) / kind
    finder = {"data": platformdirs.user_data_dir, "config": platformdirs.user_config_dir,
              "log": platformdirs.user_log_dir}[kind]
    return Path(finder(APP_NAME, appauthor=False))


def default_library_path() -> Path:
    return app_dir("data") / LIBRARY_FILE


def path_key(path: str | os.PathLike[str]) -> str:
    """The identity of a file in the library: its absolute, symlink-free path."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


# -- what browsing learns about one image -------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """The properties of one image, read with a read-only ``INFO`` open.

    Values a format does not store are None (a VDI has no physical geometry, a raw
    image no UUID).
    """

    backend: str
    description: str
    capabilities: Capability
    disk_type: DiskType
    size: int
    file_size: int
    allocated_size: int
    version: int
    image_flags: ImageFlags
    open_flags: OpenFlags
    variant: tuple[str, ...]
    uuid: uuidlib.UUID | None
    parent_uuid: uuidlib.UUID | None
    modification_uuid: uuidlib.UUID | None
    parent_modification_uuid: uuidlib.UUID | None
    comment: str | None
    pchs: Geometry | None
    lchs: Geometry | None
    parent_filename: str | None

    @property
    def is_diff(self) -> bool:
        return bool(self.image_flags & ImageFlags.DIFF)

    @property
    def stores_uuids(self) -> bool:
        return self.uuid is not None


T = TypeVar("T")


def _optional(read: Callable[[], T]) -> T | None:
    """A property the format may not store: None instead of the engine's error."""
    try:
        return read()
    except (NotSupported, GeometryNotSet):
        return None


def inspect(path: str, backend: str | None = None,
            disk_type: DiskType = DiskType.INVALID) -> ImageInfo:
    """Open ``path`` alone, read-only, and read its properties.

    ``backend`` and ``disk_type`` None/INVALID are probed.  Raises
    :class:`~vdgui.engine.VDError` when the file is missing, unreadable, damaged or
    not a disk image.
    """
    if backend is None or disk_type == DiskType.INVALID:
        backend, disk_type = probe(path)
    with Disk(disk_type) as disk:
        disk.open(path, backend, BROWSE_FLAGS)
        view = disk[0]
        info = backend_info(view.backend)
        return ImageInfo(
            backend=view.backend, description=info.description,
            capabilities=info.capabilities, disk_type=view.disk_type, size=view.size,
            file_size=view.file_size, allocated_size=view.allocated_size,
            version=view.version, image_flags=view.image_flags, open_flags=view.open_flags,
            variant=tuple(view.variant),
            uuid=_optional(lambda: view.uuid),
            parent_uuid=_optional(lambda: view.parent_uuid),
            modification_uuid=_optional(lambda: view.modification_uuid),
            parent_modification_uuid=_optional(
                lambda: view.parent_modification_uuid),
            comment=_optional(lambda: view.comment),
            pchs=_optional(lambda: view.pchs),
            lchs=_optional(lambda: view.lchs),
            parent_filename=view.parent_filename,
        )


# -- the tree of chains ---------------------------------------------------------------


@dataclass(eq=False)
class Node:
    """One image in the library tree: a base has its differencing images as children."""

    path: str
    info: ImageInfo | None = None
    #: Why the image (or the link to its parent) is unusable; None when all is well.
    error: VDError | None = None
    parent: Node | None = field(default=None, repr=False)
    children: list[Node] = field(default_factory=list, repr=False)
    #: True for the images the person opened (the library's entries).
    in_library: bool = False
    #: Other images in the library that carry the same UUID as this one.
    same_uuid: list[Node] = field(default_factory=list, repr=False)

    @property
    def key(self) -> str:
        return path_key(self.path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def ok(self) -> bool:
        """True when the image and its whole chain could be read."""
        return self.info is not None and self.error is None

    def ancestors(self) -> list[Node]:
        """The chain below this image, base first (without the image itself)."""
        out = []
        node = self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def descendants(self) -> list[Node]:
        out = []
        for child in self.children:
            out.append(child)
            out.extend(child.descendants())
        return out


@dataclass
class LibraryTree:
    """The result of :func:`scan`: every image of every chain, as a forest."""

    roots: list[Node] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    #: Library entry (key) -> keys of the images of its chain, base first.
    chains: dict[str, list[str]] = field(default_factory=dict)
    #: UUIDs carried by more than one file -> those files' nodes.
    duplicates: dict[uuidlib.UUID, list[Node]] = field(default_factory=dict)

    def find(self, path: str | os.PathLike[str]) -> Node | None:
        return self.nodes.get(path_key(path))

    def entries_through(self, node: Node) -> list[str]:
        """Library entries whose chain contains ``node`` (what removing it removes)."""
        return [entry for entry, chain in self.chains.items() if node.key in chain]

    def __len__(self) -> int:
        return len(self.nodes)


def scan(entries: Iterable[str], search_paths: Sequence[str] = (),
         progress: Progress | None = None) -> LibraryTree:
    """Discover the chain of every entry and read every image's properties.

    Read-only; never raises for a bad file: the failure is recorded on its node
    (only :class:`~vdgui.engine.Cancelled`, through ``progress``, stops it).  Slow
    for long chains or many files, so the GUI runs it on a worker thread.
    """
    tree = LibraryTree()
    entries = list(entries)

    def node_for(path: str, backend: str | None = None,
                 disk_type: DiskType = DiskType.INVALID) -> Node:
        key = path_key(path)
        node = tree.nodes.get(key)
        if node is None:
            node = tree.nodes[key] = Node(os.path.abspath(path))
            try:
                node.info = inspect(path, backend, disk_type)
            except VDError as exc:
                node.error = exc
        return node

    for done, entry in enumerate(entries):
        if progress is not None:
            progress.update(done, len(entries), f"reading {os.path.basename(entry)}")
        try:
            links = [(link.path, link.backend, link.disk_type)
                     for link in discover_chain(entry, search_paths)]
            problem = None
        except VDError:
            # As much of the chain as can be followed; the problem belongs to the
            # oldest image reached (unreadable, or its parent missing).
            paths, problem = _follow(entry, search_paths)
            links = [(path, None, DiskType.INVALID) for path in paths]
        previous: Node | None = None
        for path, backend, disk_type in links:
            node = node_for(path, backend, disk_type)
            if previous is not None and node.parent is None and node is not previous:
                node.parent = previous
                previous.children.append(node)
            elif previous is None and problem is not None:
                node.error = node.error or problem
            previous = node
        assert previous is not None  # a chain holds at least the image itself
        previous.in_library = True
        tree.chains[previous.key] = [path_key(path) for path, _, _ in links]

    tree.roots = sorted((n for n in tree.nodes.values() if n.parent is None),
                        key=lambda n: (n.name.lower(), n.path))
    for node in tree.nodes.values():
        node.children.sort(key=lambda n: (n.name.lower(), n.path))
        _check_link(node)
    for root in tree.roots:
        _mark_broken_below(root, None)
    _find_duplicates(tree)
    return tree


def _follow(path: str, search_paths: Sequence[str]) -> tuple[list[str], VDError]:
    """The chain ending in ``path`` as far as it can be followed (base-most first),
    and why it stops there."""
    walked: list[str] = []
    seen: set[str] = set()
    current: str | None = path
    while current is not None:
        if path_key(current) in seen or len(walked) >= MAX_CHAIN_DEPTH:
            return walked[::-1], Corrupted("the chain of parent images loops back on "
                                           "itself", current)
        seen.add(path_key(current))
        walked.append(current)
        try:
            with Disk() as disk:
                disk.open(current, None, BROWSE_FLAGS)
                current = find_parent(disk.image(0), search_paths)
        except VDError as exc:
            return walked[::-1], exc
    # Only reached when the chain is sound after all (a file changed meanwhile).
    return walked[::-1], VDError("the chain could not be read", path)


def _mark_broken_below(node: Node, broken: Node | None) -> None:
    """Images above a broken one cannot be opened with their chain either: say why."""
    if node.error is None and broken is not None:
        node.error = ChainBroken(f"an image it is built on, {broken.name}, has a problem: "
                                 f"{broken.error.message if broken.error else 'unreadable'}",
                                 node.path)
    below = node if node.error is not None and broken is None else broken
    for child in node.children:
        _mark_broken_below(child, below)


def _check_link(node: Node) -> None:
    """Record on a child whose stored parent UUID is not its parent's UUID why the
    chain cannot be opened (the engine refuses it with the same error)."""
    parent = node.parent
    if node.error is not None or parent is None or node.info is None or parent.info is None:
        return
    wanted, actual = node.info.parent_uuid, parent.info.uuid
    if wanted in (None, NIL_UUID) or actual is None or wanted == actual:
        return
    node.error = UuidMismatch(
        f"the parent UUID stored in it ({wanted}) is not the UUID of the image found as "
        f"its parent, {parent.path} ({actual}); if that is the right parent (a copy, or "
        f"one whose UUID was changed), re-link it", node.path)


def _find_duplicates(tree: LibraryTree) -> None:
    by_uuid: dict[uuidlib.UUID, list[Node]] = {}
    for node in tree.nodes.values():
        if node.info is not None and node.info.uuid not in (None, NIL_UUID):
            by_uuid.setdefault(node.info.uuid, []).append(node)
    for value, nodes in by_uuid.items():
        if len(nodes) > 1:
            nodes.sort(key=lambda n: n.path)
            tree.duplicates[value] = nodes
            for node in nodes:
                node.same_uuid = [n for n in nodes if n is not node]


def check_new_entry(path: str, search_paths: Sequence[str] = ()) -> VDError | None:
    """Whether ``path`` can join the library.

    None when its whole chain opens.  When the image is readable but its chain is
    not (a missing parent), the problem is returned: the image can still be listed,
    marked as broken.  When the file itself is unusable (missing, damaged, not a
    disk image), the error is raised.
    """
    try:
        discover_chain(path, search_paths)
        return None
    except VDError as exc:
        inspect(path)
        return exc


# -- the persisted list ---------------------------------------------------------------


class Library:
    """The list of opened images, persisted as JSON.

    ``path`` None uses :func:`default_library_path`.  Changes are written at once
    (atomically, through a temporary file) so that a crash loses nothing.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_library_path()
        self._entries: list[str] = []
        self._search_paths: list[str] = []
        self.load()

    @property
    def entries(self) -> list[str]:
        """The opened images (absolute paths), in the order they were added."""
        return list(self._entries)

    @property
    def search_paths(self) -> list[str]:
        """Folders searched for parent images that are not beside their children."""
        return list(self._search_paths)

    def add_search_path(self, folder: str | os.PathLike[str]) -> bool:
        """Remember ``folder`` (saved at once); False when it was known already."""
        folder = os.path.abspath(os.fspath(folder))
        if folder in self._search_paths:
            return False
        self._search_paths.append(folder)
        self.save()
        return True

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False
        key = path_key(path)
        return any(path_key(p) == key for p in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def load(self) -> None:
        """Read the library file; a missing file is an empty library.

        An unreadable file is moved aside (``library.json.bad``) rather than
        overwritten, so nothing the person had is lost.
        """
        self._entries = []
        self._search_paths = []
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the library %s: %s", self.path, exc)
            return
        try:
            data = json.loads(text)
            images = data["images"]
            folders = data.get("search_paths", [])
            for key, value in (("images", images), ("search_paths", folders)):
                if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                    raise ValueError(f"'{key}' is not a list of paths")
        except (ValueError, KeyError, TypeError) as exc:
            bad = self.path.with_name(self.path.name + ".bad")
            log.warning("the library %s is damaged (%s); moved aside to %s",
                        self.path, exc, bad)
            try:
                os.replace(self.path, bad)
            except OSError:
                pass
            return
        self._entries = list(dict.fromkeys(os.path.abspath(p) for p in images))
        self._search_paths = list(dict.fromkeys(os.path.abspath(p) for p in folders))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT_VERSION, "images": self._entries,
                "search_paths": self._search_paths}
        fd, tmp = tempfile.mkstemp(prefix=".library-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2)
                out.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def add(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """Add images (saved at once); returns the ones that were not there yet."""
        known = {path_key(p) for p in self._entries}
        added = []
        for path in paths:
            key = path_key(path)
            if key not in known:
                known.add(key)
                added.append(os.path.abspath(os.fspath(path)))
        if added:
            self._entries.extend(added)
            self.save()
        return added

    def remove(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """Remove images from the list (never their files); returns those removed."""
        keys = {path_key(p) for p in paths}
        removed = [p for p in self._entries if path_key(p) in keys]
        if removed:
            self._entries = [p for p in self._entries if path_key(p) not in keys]
            self.save()
        return removed

    def replace(self, old: str | os.PathLike[str], new: str | os.PathLike[str]) -> bool:
        """Put ``new`` where the entry ``old`` was (an image a merge deleted, replaced by
        the one that received its data); False when ``old`` is not an entry."""
        key, new_path = path_key(old), os.path.abspath(os.fspath(new))
        index = next((i for i, p in enumerate(self._entries) if path_key(p) == key), None)
        if index is None:
            return False
        if new_path in self:
            del self._entries[index]
        else:
            self._entries[index] = new_path
        self.save()
        return True

    def scan(self, progress: Progress | None = None) -> LibraryTree:
        """:func:`scan` of the entries, with the library's search paths."""
        return scan(self.entries, self.search_paths, progress)
